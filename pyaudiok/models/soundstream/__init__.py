"""SoundStream: streaming neural audio codec (DESIGN.md §2)."""
