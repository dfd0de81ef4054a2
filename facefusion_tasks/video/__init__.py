"""Video I/O through ffmpeg pipes: probe, decode, encode, mux."""
