"""PrismAudio: video-to-audio generation with decomposed chain-of-thought and Fast-GRPO."""

__version__ = "0.1.0"
