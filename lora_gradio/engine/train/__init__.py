"""Training: the guide's settings in, kohya-compatible LoRA files out.

config.py   the settings model (keys keep the guide notebook's names)
steps.py    images x repeats x epochs / batch = steps
models.py   loading base models: single files, diffusers folders, hub ids, URLs, presets
data.py     captions, buckets, latents cache, long prompts with clip skip
network.py  LoRA/LoCon/... through lycoris with kohya's module names
saving.py   safetensors with kohya metadata and hashes, epoch names, keep last N
loop.py     the training loop (Accelerate), resume, NaN guard, progress
Heavy imports (torch, diffusers, transformers, lycoris) stay inside functions.
"""
