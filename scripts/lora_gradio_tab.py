"""The WebUI loads this file (again on every Reload UI); everything else lives in the lora_gradio
package beside it: the tab, its settings and the X/Y/Z plot axes "LoRA epoch" and "LoRA weight"."""

from lora_gradio.webui import register

register()
