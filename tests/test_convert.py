"""The converter: official folders/files in, expert + native base out; streaming, atomic, dtypes."""
import json
import os

import pytest
import torch
from safetensors import safe_open

from vap_core import convert as convert_mod
from vap_core.wan import keys as wan_keys
from vap_core.errors import VAPFormatError
from vap_core.formats.safetensors_io import LazyTensors, read_header
from vap_headless.demo.tiny_wan import official_wan_mot_state_dict
from wan_fixtures import write_official_folder

CONFIG = {"num_layers": 3, "block_idx_with_mot_ref": [1, 2], "text_dim": 32, "ffn_dim": 64}


@pytest.fixture
def official(tmp_path):
    sd, cfg = official_wan_mot_state_dict(CONFIG, seed=7)
    return write_official_folder(str(tmp_path / "Video-As-Prompt-Wan2.1-14B"), sd, cfg, shards=3), sd, cfg


def _read(path):
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_sharded_folder_to_expert_and_native_base(official, tmp_path):
    src, sd, cfg = official
    expert, base = str(tmp_path / "expert.safetensors"), str(tmp_path / "base.safetensors")
    ckpt = convert_mod.convert(src, expert, base, quiet=True)
    assert ckpt.variant == "wan2.1" and ckpt.expert_blocks == [1, 2]
    expert_sd, expert_meta = _read(expert)
    base_sd, base_meta = _read(base)
    base_map, expert_map = wan_keys.split_and_map(sd)
    assert set(expert_sd) == set(expert_map) and set(base_sd) == set(base_map)
    for native, official_key in {**base_map, **expert_map}.items():
        got = expert_sd.get(native) if native in expert_map else base_sd[native]
        assert torch.equal(got, sd[official_key]), native
    assert json.loads(expert_meta["vap_expert_blocks"]) == [1, 2]
    assert json.loads(expert_meta["vap_config"])["text_dim"] == 32
    assert json.loads(base_meta["config"])["transformer"] == {"num_heads": 1, "text_dim": 32, "freq_dim": 256, "eps": 1e-6}
    # every official tensor went somewhere
    assert len(expert_sd) + len(base_sd) == len(sd)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp8_e4m3fn"])
def test_output_dtypes(official, tmp_path, dtype):
    src, sd, _ = official
    out = str(tmp_path / "expert.safetensors")
    convert_mod.convert(src, expert_out=out, dtype=dtype, quiet=True)
    tensors, _ = _read(out)
    want = convert_mod.DTYPES[dtype]
    for name, t in tensors.items():
        if want == torch.float8_e4m3fn and not (t.ndim == 2 and name.endswith(".weight")):
            assert t.dtype == torch.bfloat16, name  # norms, biases, tables, conv stay bf16
        else:
            assert t.dtype == want, name


def test_single_official_file_input(tmp_path):
    sd, cfg = official_wan_mot_state_dict(CONFIG, seed=1)
    from safetensors.torch import save_file
    single = str(tmp_path / "vap_official.safetensors")
    save_file(sd, single, metadata={"config": json.dumps(cfg)})
    out = str(tmp_path / "expert.safetensors")
    ckpt = convert_mod.convert(single, expert_out=out, quiet=True)
    assert ckpt.expert_blocks == [1, 2] and ckpt.config["text_dim"] == 32
    assert os.path.isfile(out)


def test_interrupted_write_leaves_no_file(official, tmp_path, monkeypatch):
    src, _, _ = official
    out = str(tmp_path / "expert.safetensors")
    real_get, calls = LazyTensors.get, []

    def interrupted(self, name):
        calls.append(name)
        if len(calls) == 5:
            raise KeyboardInterrupt  # Ctrl-C half way through
        return real_get(self, name)

    monkeypatch.setattr(LazyTensors, "get", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert_mod.convert(src, expert_out=out, quiet=True)
    assert os.listdir(tmp_path) == ["Video-As-Prompt-Wan2.1-14B"]  # neither the file nor a .partial


def test_streams_one_shard_after_another(official, tmp_path, monkeypatch):
    """Tensors are read shard by shard and each is written before the next is read (bounded RAM)."""
    src, _, _ = official
    order, alive = [], []
    real_get = LazyTensors.get

    def tracking(self, name):
        order.append(self.where[name])
        alive.append(name)
        return real_get(self, name)

    import vap_core.formats.safetensors_io as io_mod
    real_write = io_mod.write_streaming

    def write(path, layout, produce, metadata=None, progress=None):
        def one_at_a_time(name):
            t = produce(name)
            assert len(alive) == 1, "more than one source tensor held at once"
            alive.clear()
            return t
        return real_write(path, layout, one_at_a_time, metadata, progress)

    monkeypatch.setattr(LazyTensors, "get", tracking)
    monkeypatch.setattr(convert_mod, "write_streaming", write)
    convert_mod.convert(src, expert_out=str(tmp_path / "e.safetensors"), base_out=str(tmp_path / "b.safetensors"), quiet=True)
    switches = sum(1 for a, b in zip(order, order[1:]) if a != b)
    assert switches <= 2 * 3 - 1  # expert pass then base pass, each visiting the 3 shards once


def test_check_base_reports_match_and_mismatch(official, tmp_path):
    src, _, _ = official
    base = str(tmp_path / "base.safetensors")
    convert_mod.convert(src, base_out=base, dtype="bf16", quiet=True)
    assert convert_mod.check_base(src, base)["matches"]
    other_sd, other_cfg = official_wan_mot_state_dict(CONFIG, seed=8)
    other = write_official_folder(str(tmp_path / "other"), other_sd, other_cfg)
    other_base = str(tmp_path / "other_base.safetensors")
    convert_mod.convert(other, base_out=other_base, quiet=True)
    report = convert_mod.check_base(src, other_base)
    assert not report["matches"] and report["compared"] > 5


def test_cli(official, tmp_path, capsys):
    src, _, _ = official
    out = str(tmp_path / "cli_expert.safetensors")
    assert convert_mod.main([src, "--expert", out, "--quiet"]) == 0
    assert "expert blocks [1, 2]" in capsys.readouterr().out
    header, meta = read_header(out)
    assert meta["vap_variant"] == "wan2.1"
    assert convert_mod.main([str(tmp_path / "nowhere"), "--expert", str(tmp_path / "x.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.safetensors")
