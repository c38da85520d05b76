"""`python -m prismaudio.edit VIDEO --audio WAV ...`: `prismaudio edit` outside the main CLI."""

import sys

from .command import main

sys.exit(main())
