"""Wan2.1-I2V-14B VAP: key map, expert blocks, MoT forward, attachment, conditioning."""
