"""Face models: sessions, detection, embedding, swapping and paste-back."""
