"""python -m fastrnn.finetune: the fastrnn-finetune command."""

import sys

from .cli import main

sys.exit(main())
