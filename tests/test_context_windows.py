"""Core context windows on a VAP model (docs/HOST_INTEGRATION.md#context-windows): with 'Context Windows (Manual)' or
'WAN Context Windows' placed before or after Apply VAP Expert, a target longer than the window is sampled window by
window, every window sees the WHOLE reference, the start-image condition is sliced as core slices it for Wan I2V, and
the fused result equals running each window by hand through the model with the full reference and fusing with
core's weights. CogVideoX VAP refuses context windows with the reason."""
import pytest
import torch

import cog_fixtures
import wan_fixtures

WAN_CONFIG = {"num_layers": 3, "block_idx_with_mot_ref": [0, 2], "text_dim": 32, "ffn_dim": 64}
FRAMES = 5                       # target latent frames
WINDOWS = [[0, 1, 2], [2, 3, 4]]  # 'standard_static' windows of 3 latent frames, overlap 1, over 5 frames
ORDERS = ["before", "after"]
STEPS = 2


@pytest.fixture(scope="module")
def wan(pack, tmp_path_factory):
    from vap_headless.demo.tiny_wan import official_wan_mot_state_dict
    tmp = tmp_path_factory.mktemp("wan_ctxwin")
    sd, cfg = official_wan_mot_state_dict(WAN_CONFIG, seed=5)
    wan_fixtures.write_official_folder(str(tmp / "vap"), sd, cfg)
    base, expert, _ = wan_fixtures.convert_and_load(pack, str(tmp / "vap"), str(tmp))
    return base, expert, cfg


def window_node(kind):
    """A core context-window node's function on a MODEL, windows of 3 latent frames overlapping by 1."""
    from comfy_extras import nodes_context_windows as n
    if kind == "ContextWindowsManual":
        return lambda m: n.ContextWindowsManualNode.execute(
            m, context_length=3, context_overlap=1, context_schedule="standard_static", context_stride=1,
            closed_loop=False, fuse_method="pyramid", dim=2, freenoise=False, cond_retain_index_list="",
            split_conds_to_windows=False).result[0]
    # in pixel frames (4k+1 -> latent frames); retain_first_frame keeps the start image in every window
    return lambda m: n.WanContextWindowsManualNode.execute(
        m, context_length=9, context_overlap=4, context_schedule="standard_static", context_stride=1,
        closed_loop=False, fuse_method="pyramid", freenoise=False, retain_first_frame=True).result[0]


def wan_conds(pack, inputs):
    import comfy.clip_vision
    import comfy.conds
    conds = pack.vap_core.conds

    def cond(text, ref_text):
        clip = comfy.clip_vision.Output()
        clip.penultimate_hidden_states = inputs["clip"]
        # the start image condition as WanImageToVideo stores it (here a random latent, mask 0 on frame 0)
        mask = torch.ones(1, 1, *inputs["x"].shape[2:])
        mask[:, :, 0] = 0
        return [[text, {"clip_vision_output": clip, "concat_latent_image": inputs["x"][:, 20:], "concat_mask": mask,
                        "model_conds": {conds.REF_LATENT: comfy.conds.CONDRegular(inputs["ref_latent"]),
                                        conds.REF_CONTEXT: comfy.conds.CONDRegular(ref_text),
                                        conds.REF_CLIP: comfy.conds.CONDRegular(inputs["ref_clip"])}}]]
    return (cond(inputs["context"], inputs["ref_context"]),
            cond(torch.zeros_like(inputs["context"]), torch.zeros_like(inputs["ref_context"])))


def sample(model, positive, negative, shape, steps=STEPS):
    import comfy.sample
    latent = torch.zeros(shape)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    return comfy.sample.sample(model, noise, steps, 3.0, "euler", "simple", positive, negative, latent, seed=0)


class Recorder:
    """Records every call of core's context handler (its inputs and fused result) and every MoT forward."""

    def __init__(self, monkeypatch, pack):
        import comfy.context_windows
        self.executions, self.mot_calls = [], []
        handler_cls = comfy.context_windows.IndexListContextHandler
        real_execute = handler_cls.execute

        def execute(handler, calc_cond_batch, model, conds, x_in, timestep, model_options):
            out = real_execute(handler, calc_cond_batch, model, conds, x_in, timestep, model_options)
            options = dict(model_options["transformer_options"])
            self.executions.append((handler, model, conds, x_in.clone(), timestep.clone(), options,
                                    [o.clone() for o in out]))
            return out
        monkeypatch.setattr(handler_cls, "execute", execute)

        wrapper_cls = pack.vap_core.wan.apply.WanVAPWrapper
        real_forward = wrapper_cls.forward
        ref_key = pack.vap_core.conds.REF_LATENT

        def forward(wrapper, original, model, x, *args, **kwargs):
            window = kwargs.get("transformer_options", args[-1] if args else {}).get("context_window")
            self.mot_calls.append((None if window is None else list(window.index_list), x.shape[2],
                                   None if kwargs.get(ref_key) is None else kwargs[ref_key].clone()))
            return real_forward(wrapper, original, model, x, *args, **kwargs)
        monkeypatch.setattr(wrapper_cls, "forward", forward)

    def clear(self):
        self.executions.clear()
        self.mot_calls.clear()


def by_hand(handler, model, conds, x_in, timestep, transformer_options):
    """The handler's result computed independently: each window's frames (with core's causal anchor frame, when the
    host adds one) through the model's ``apply_model`` with the FULL reference and the start-image condition sliced
    to the window (frames in ``cond_retain_index_list`` taken from the whole condition, as core does), fused with
    core's window weights."""
    options = {k: v for k, v in transformer_options.items() if k != "context_window"}
    anchor_fix = getattr(handler, "causal_window_fix", False)
    outs = []
    for cond in conds:
        model_conds = cond[0]["model_conds"]
        total = torch.zeros_like(x_in)
        weight_sum = torch.zeros(1, 1, x_in.shape[2], 1, 1)
        for idx in WINDOWS:
            frames = ([idx[0] - 1] if anchor_fix and idx[0] > 0 else []) + idx
            kwargs = {key: value.cond for key, value in model_conds.items()}
            concat = kwargs["c_concat"][:, :, frames].clone()
            for r in handler.cond_retain_index_list:
                concat[:, :, r] = kwargs["c_concat"][:, :, r]
            kwargs["c_concat"] = concat
            with torch.no_grad():
                out = model.apply_model(x_in[:, :, frames], timestep, transformer_options=dict(options), **kwargs)
            out = out[:, :, len(frames) - len(idx):]  # the anchor frame's output is dropped
            w = torch.tensor(handler.fuse_method.func(len(idx), sigma=timestep, handler=handler, full_length=FRAMES,
                                                      idxs=idx, context_overlap=handler.context_overlap),
                             dtype=x_in.dtype).view(1, 1, -1, 1, 1)
            total[:, :, idx] += out * w
            weight_sum[:, :, idx] += w
        outs.append(total / weight_sum)
    return outs


@pytest.mark.parametrize("ref_frames", [FRAMES, 3], ids=["reference_as_long_as_target", "shorter_reference"])
@pytest.mark.parametrize("kind", ["ContextWindowsManual", "WanContextWindowsManual"])
def test_wan_context_windows_see_the_whole_reference_on_either_side(pack, wan, monkeypatch, kind, ref_frames):
    base, expert, cfg = wan
    apply = pack.vap_core.expert.loading.apply_expert
    windowed = window_node(kind)
    inputs = wan_fixtures.random_inputs(cfg, frames=FRAMES, ref_frames=ref_frames, seed=7)
    positive, negative = wan_conds(pack, inputs)
    shape = (1, 16, FRAMES, *inputs["x"].shape[3:])
    recorder = Recorder(monkeypatch, pack)

    base_windowed = sample(windowed(base), positive, negative, shape)
    assert recorder.executions and not recorder.mot_calls
    results = {}
    for order in ORDERS:
        recorder.clear()
        model = apply(windowed(base), expert) if order == "before" else windowed(apply(base, expert))
        results[order] = sample(model, positive, negative, shape)

        # windows seen: every step ran the model once per window (cond and uncond batched), each time with the
        # whole reference
        assert len(recorder.executions) == STEPS
        windows = [w for w, _, _ in recorder.mot_calls]
        assert windows == WINDOWS * STEPS, windows
        for _, _, ref in recorder.mot_calls:
            assert ref is not None
            assert ref.shape[2] == ref_frames, f"the reference reached the model with {ref.shape[2]} frames"
            assert torch.equal(ref[:1], inputs["ref_latent"])
        # the fused result equals each window run by hand with the full reference, fused with core's weights
        for handler, model_obj, conds, x_in, timestep, options, out in recorder.executions:
            for got, want in zip(out, by_hand(handler, model_obj, conds, x_in, timestep, options)):
                assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert torch.equal(results["before"], results["after"])
    assert not torch.allclose(results["before"], base_windowed, atol=1e-3)  # VAP still runs
    plain_vap = sample(apply(base, expert), positive, negative, shape)
    assert not torch.allclose(results["before"], plain_vap, atol=1e-3)  # the windows took effect


def test_without_the_guard_core_would_slice_the_reference(pack, wan, monkeypatch):
    """Why the guard exists, and that the test above would see its absence: with the callback not registered, core
    cuts a reference as long as the target into the window's frames."""
    base, expert, cfg = wan
    monkeypatch.setattr(pack.vap_core.expert.patching, "keep_reference_whole_in", lambda options: None)
    inputs = wan_fixtures.random_inputs(cfg, frames=FRAMES, ref_frames=FRAMES, seed=7)
    positive, negative = wan_conds(pack, inputs)
    recorder = Recorder(monkeypatch, pack)
    model = window_node("ContextWindowsManual")(pack.vap_core.expert.loading.apply_expert(base, expert))
    sample(model, positive, negative, (1, 16, FRAMES, *inputs["x"].shape[3:]), steps=1)
    assert recorder.mot_calls and all(ref.shape[2] < FRAMES for _, _, ref in recorder.mot_calls)  # window-sized
    handler, model_obj, conds, x_in, timestep, options, out = recorder.executions[0]
    assert not torch.allclose(out[0], by_hand(handler, model_obj, conds, x_in, timestep, options)[0], atol=1e-4)


def test_keep_reference_whole_leaves_other_conds_to_core(pack):
    import comfy.conds
    cw = pack.vap_core.expert.context_windows
    ref = comfy.conds.CONDRegular(torch.zeros(1, 36, 5, 2, 2))
    for key in cw.REFERENCE_CONDS:
        assert cw.keep_reference_whole(key, ref, None, None, None, {}) is ref
    assert cw.keep_reference_whole("c_concat", ref, None, None, None, {}) is None


def test_a_handler_that_cannot_keep_the_reference_is_refused(pack):
    class OtherHandler:
        pass
    with pytest.raises(pack.vap_core.errors.VAPModelMismatch, match="keep the VAP reference whole"):
        pack.vap_core.expert.context_windows.keep_reference_whole_in({"context_handler": OtherHandler()})


def test_cogvideox_refuses_context_windows(pack, tmp_path):
    base, expert, cfg = cog_fixtures.tiny_case(pack, str(tmp_path), seed=3)
    i = cog_fixtures.random_inputs(cfg, batch=1, seed=10)
    frames = i["x"].shape[2]
    assert frames > 1
    import comfy.conds
    from comfy_extras import nodes_context_windows as n
    conds = pack.vap_core.conds

    def cond(text, ref_text):
        return [[text, {"concat_latent_image": i["x"][:, 16:],
                        "model_conds": {conds.REF_LATENT: comfy.conds.CONDRegular(i["ref_latent"]),
                                        conds.REF_CONTEXT: comfy.conds.CONDRegular(ref_text)}}]]
    positive = cond(i["context"], i["ref_context"])
    negative = cond(torch.zeros_like(i["context"]), torch.zeros_like(i["ref_context"]))
    shape = (1, 16, *i["x"].shape[2:])
    vap = pack.vap_core.expert.loading.apply_expert(base, expert)

    def windows(model, length):
        return n.ContextWindowsManualNode.execute(
            model, context_length=length, context_overlap=0, context_schedule="standard_static", context_stride=1,
            closed_loop=False, fuse_method="pyramid", dim=2, freenoise=False, cond_retain_index_list="",
            split_conds_to_windows=False).result[0]
    for model in (windows(vap, frames - 1), pack.vap_core.expert.loading.apply_expert(windows(base, frames - 1), expert)):
        with pytest.raises(pack.vap_core.errors.VAPInputError, match="cannot run under context windows"):
            sample(model, positive, negative, shape, steps=1)
    # a window as long as the target: core does not window, VAP runs as without the node
    assert torch.equal(sample(windows(vap, frames), positive, negative, shape, steps=1),
                       sample(vap, positive, negative, shape, steps=1))
