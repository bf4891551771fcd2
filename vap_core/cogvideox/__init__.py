"""CogVideoX-I2V-5B VAP: key map, expert blocks, MoT forward, attachment, conditioning, dynamic CFG."""
