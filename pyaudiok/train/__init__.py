"""Training loops behind `pyaudiok train`."""
