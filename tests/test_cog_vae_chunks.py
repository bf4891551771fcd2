"""The official CogVideoX VAE frame chunks (host-free): the first chunk carries the remainder."""
import pytest

from vap_core.cogvideox.vae_chunks import decode_chunks, encode_chunks


@pytest.mark.parametrize("frames, chunks", [
    (1, [(0, 1)]),
    (5, [(0, 5)]),
    (8, [(0, 8)]),
    (9, [(0, 9)]),
    (13, [(0, 13)]),
    (16, [(0, 8), (8, 16)]),
    (17, [(0, 9), (9, 17)]),
    (49, [(0, 9), (9, 17), (17, 25), (25, 33), (33, 41), (41, 49)]),
])
def test_encode_chunks_are_diffusers(frames, chunks):
    assert encode_chunks(frames) == chunks


@pytest.mark.parametrize("latents, chunks", [
    (1, [(0, 1)]),
    (2, [(0, 2)]),
    (3, [(0, 3)]),
    (4, [(0, 2), (2, 4)]),
    (13, [(0, 3), (3, 5), (5, 7), (7, 9), (9, 11), (11, 13)]),
])
def test_decode_chunks_are_diffusers(latents, chunks):
    assert decode_chunks(latents) == chunks


@pytest.mark.parametrize("frames", range(1, 60))
def test_chunks_cover_every_frame_once(frames):
    for bounds in (encode_chunks(frames), decode_chunks(frames)):
        covered = [i for a, b in bounds for i in range(a, b)]
        assert covered == list(range(frames))
