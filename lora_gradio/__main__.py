import sys

from lora_gradio.cli import main

sys.exit(main())
