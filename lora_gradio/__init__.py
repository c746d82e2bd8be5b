"""lora_gradio: make Stable Diffusion LoRAs following holostrawberry's guide.

Importing the package stays cheap on purpose: no torch, diffusers, transformers,
onnxruntime, fiftyone or gradio here, so the command line and the page start fast.
"""

__version__ = "0.1.0"
