"""Training: the guide's settings in, kohya-compatible LoRA files out.

config.py   the settings model (keys keep the guide notebook's names)
steps.py    images x repeats x epochs / batch = steps
models.py   loading base models: single files, diffusers folders, hub ids, URLs, presets
data.py     folders, captions, buckets, batches, image tensors
latents.py  the VAE latents cache (memory and disk)
prompts.py  long prompts in 77-token chunks with clip skip
weighting.py  weighted captions, (tag:1.2)
network.py  LoRA/LoCon/... through lycoris with kohya's module names
optim.py    optimizers and learning-rate schedules
sampling.py sample images while training
saving.py   safetensors with kohya metadata and hashes, epoch names, keep last N
loop.py     the training loop (Accelerate), resume, NaN guard, progress
Heavy imports (torch, diffusers, transformers, lycoris) stay inside functions.
"""
