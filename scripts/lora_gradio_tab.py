"""The WebUI loads this file; everything else lives in the lora_gradio package beside it."""

from lora_gradio.webui import register

register()
