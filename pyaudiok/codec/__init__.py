"""The codec file format and audio I/O behind `pyaudiok codec`."""
