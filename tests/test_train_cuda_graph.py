"""run.cuda_graph (issue 10): the trainer's step captured in one CUDA graph and replayed.

Without a GPU the capture itself cannot run; what can is everything around it: the step the graph records
(``Trainer._step_tensors``, which reads nothing back from the device), its static input buffers refilled every
step, its outputs read back as an eager step's, the switch from eager warm-up steps to replays (after the EMA
start and D's pre-training), and the options refused.  ``EagerRecorder`` stands in for the graph: recording
runs nothing, each replay runs the recorded step on the buffers it was recorded with.  The GPU test captures
for real.
"""
import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastgan.train import ConfigError, Trainer, load_config
from fastgan.train.checkpoint import load_checkpoint
from fastgan.train.graph_step import CapturedStep
from fastgan.train.graph_step import config_errors as graph_config_errors

from _host_reads import HostReads
from _train_settings import QUIET, TINY_IMAGE

CASES = {
    # EMA starting at step 4: eager until then, however short the warm-up
    "dcgan": ("dcgan-mnist", ["ema=0.9", "ema_start=4", "fused_adam=on", "cuda_graph_warmup=2"], 4),
    # n_critic batches per step, a gradient penalty (double backward) in every D update, AdamW
    "wgan-gp": ("wgan-gp-mnist", ["n_critic=2", "weight_decay_d=0.01", "fused_adam=on", "cuda_graph_warmup=2"], 2),
    # labels in the graph's inputs; D pre-training: G rests for 3 steps and takes its first update (which makes
    # its optimiser's state) eagerly, so nothing is captured before step 4
    "acgan": ("acgan-mnist", ["d_pretrain=3", "fused_adam=on", "cuda_graph_warmup=1"], 4),
    # virtual batch norm in G and D: each step's reference pass remakes the layers' reference statistics
    "vbn": ("dcgan-mnist", ["g_norm=vbn", "d_norm=vbn", "fused_adam=on", "cuda_graph_warmup=2"], 2),
}


class OpLog(TorchDispatchMode):
    """The operators a step issues, each with its non-tensor arguments and its tensors' shapes and dtypes:
    what a CUDA graph records and then repeats, whatever the Python around it would do next time."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}

        def describe(a):
            if isinstance(a, torch.Tensor):
                return ("T", tuple(a.shape), a.dtype)
            if isinstance(a, (list, tuple)):
                return tuple(describe(v) for v in a)
            if a is None or isinstance(a, (bool, int, float, str, torch.dtype, torch.device, torch.memory_format,
                                           torch.layout)):
                return a
            return type(a).__name__  # (the profiler's record_function handles: not launched work)

        if func.namespace != "profiler":
            self.ops.append((str(func), describe(args), describe(sorted(kwargs.items()))))
        return func(*args, **kwargs)


class EagerRecorder:
    """A CUDA graph's contract on CPU: ``record`` runs nothing and returns the outputs, ``replay`` reruns what
    was recorded (on the same input buffers) and overwrites those outputs in place.  A graph repeats the
    operators and arguments it recorded; rerunning the Python instead would hide a step whose Python changes
    from step to step (a decaying constant, a branch), so every replay must issue the first replay's
    operators with the same arguments.  A graph also replays on the memory it was captured with: given the
    trainer, every replay requires its weights, buffers, optimiser state and EMA to be the tensors the previous
    replay left (one replaced between replays would go on being updated by a real graph, unseen; the step's
    own Python may make new ones, which the graph's capture of it would then keep)."""

    def __init__(self, trainer=None):
        self.fn, self.outputs, self.recorded, self.ops = None, {}, 0, None
        self.trainer, self.left = trainer, None

    def warm(self, fn):
        return fn()

    def record(self, fn):
        self.fn, self.ops, self.left = fn, None, None
        self.recorded += 1
        return self.outputs

    def replay(self):
        if self.left is not None:
            now = _state_storage(self.trainer)
            assert now == self.left, "a tensor the graph was captured with has been replaced: " + ", ".join(
                name for name in self.left if now.get(name) != self.left[name])
        with OpLog() as log:
            fresh = self.fn()
        if self.ops is None:
            self.ops = log.ops
        assert log.ops == self.ops, next((i, a, b) for i, (a, b) in enumerate(zip(log.ops, self.ops)) if a != b) \
            if len(log.ops) == len(self.ops) else (len(log.ops), len(self.ops))
        self.outputs.clear()
        self.outputs.update(fresh)
        if self.trainer is not None:
            self.left = _state_storage(self.trainer)


def _state_storage(tr) -> dict:
    """Where the trainer's persistent tensors live (name -> storage address): what a replay reads and updates."""
    named = {f"{part}.{k}": t for part, model in (("G", tr.G), ("D", tr.D))
             for k, t in model.state_dict(keep_vars=True).items()}
    for part, opt in (("opt_g", tr.opt_g), ("opt_d", tr.opt_d)):
        for i, state in enumerate(opt.state.values()):
            named.update({f"{part}[{i}].{k}": t for k, t in state.items() if torch.is_tensor(t)})
    if tr.ema is not None:
        named.update({f"ema.{k}": t for k, t in tr.ema.model.state_dict(keep_vars=True).items()})
    return {name: t.data_ptr() for name, t in named.items()}


def _with_stand_in_graph(tr) -> EagerRecorder:
    """``tr`` with run.cuda_graph's step on the stand-in graph (which watches tr's state between replays)."""
    recorder = EagerRecorder(tr)
    tr.captured = CapturedStep(tr._step_tensors, tr._graph_ready, tr.device, recorder=recorder)
    return recorder


def _trainer(preset, out, *sets, log=lambda s: None):
    return Trainer(load_config(preset=preset, sets=TINY_IMAGE + QUIET + [f"out={out}", "steps=8", *sets]), log=log)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_replayed_step_trains_exactly_as_the_eager_one(tmp_path, monkeypatch, case):
    preset, sets, first_capture = CASES[case]
    recorder = None
    nan_step = first_capture + 2  # a replayed step on a NaN batch: skipped on the device, buffers restored
    rows, trainers = {}, {}
    lines = []
    for name in ("eager", "graphed"):  # one after the other: each trainer seeds torch's global generator
        tr = trainers[name] = _trainer(preset, tmp_path / name, *sets, log=lines.append)
        if name == "graphed":
            recorder = _with_stand_in_graph(tr)
        real_next = tr.stream.next

        def next_batch(tr=tr, real_next=real_next):
            x, y = real_next()
            return (torch.full_like(x, float("nan")) if tr.step == nan_step else x), y

        monkeypatch.setattr(tr.stream, "next", next_batch)
        rows[name] = []
        for _ in range(7):
            rows[name].append(tr.train_step())
            assert name == "eager" or tr.captured.captured is (tr.step > first_capture)
    eager, graphed = trainers["eager"], trainers["graphed"]
    assert recorder.recorded == 1 and graphed.captured.replays == 7 - first_capture
    assert [line for line in lines if "cuda_graph" in line] == [
        f"fastgan train: run.cuda_graph: step {first_capture + 1} captured in a CUDA graph after {first_capture} "
        "eager steps; replaying it from now on"]  # (said once, by the captured run)
    assert graphed.captured.eager_steps == first_capture
    assert repr(rows["graphed"]) == repr(rows["eager"])  # every logged number, the NaN step's (NaN) included
    assert [e["message"] for e in graphed.monitor.events] == [e["message"] for e in eager.monitor.events] != []
    for part in ("G", "D"):
        a, b = getattr(eager, part).state_dict(), getattr(graphed, part).state_dict()
        assert [k for k in a if not torch.equal(a[k], b[k])] == [], part
    if eager.ema is not None:
        a, b = eager.ema.model.state_dict(), graphed.ema.model.state_dict()
        assert [k for k in a if not torch.equal(a[k], b[k])] == []
    for opt_a, opt_b in ((eager.opt_d, graphed.opt_d), (eager.opt_g, graphed.opt_g)):
        for sa, sb in zip(opt_a.state.values(), opt_b.state.values()):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert len(graphed.captured.inputs) == graphed.cfg.optim.n_critic  # the graph's own batch buffers


def test_loading_a_state_after_the_capture_captures_again(tmp_path):
    """A graph replays on the tensors it captured; loading a checkpoint gives the optimisers new state tensors
    (weights and EMA load in place), so the trainer drops its graph, warms up and captures again, and trains on
    as the eager trainer does after the same load."""
    preset, sets, first_capture = CASES["dcgan"]
    recorder = None
    rows, trainers = {}, {}
    for name in ("eager", "graphed"):
        tr = trainers[name] = _trainer(preset, tmp_path / name, *sets)
        if name == "graphed":
            recorder = _with_stand_in_graph(tr)
        for _ in range(first_capture + 1):
            tr.train_step()
        saved = load_checkpoint(tr.save())
        for _ in range(2):
            tr.train_step()
        before = next(iter(tr.opt_g.state.values()))["exp_avg"]
        tr.load_state_dict(saved)  # back to the saved step
        assert next(iter(tr.opt_g.state.values()))["exp_avg"] is not before  # what a graph would miss
        rows[name] = [tr.train_step() for _ in range(first_capture + 2)]
    graphed = trainers["graphed"]
    # after the load: run.cuda_graph_warmup (2) eager steps again (the EMA has started), then the replays
    assert recorder.recorded == 2 and graphed.captured.eager_steps == 2
    assert graphed.captured.replays == first_capture + 2 - 2
    assert repr(rows["graphed"]) == repr(rows["eager"])
    for part in ("G", "D"):
        a, b = getattr(trainers["eager"], part).state_dict(), getattr(graphed, part).state_dict()
        assert [k for k in a if not torch.equal(a[k], b[k])] == [], part


def test_without_a_new_capture_a_replay_after_loading_would_miss_the_new_state(tmp_path, monkeypatch):
    """What the trainer's recapture prevents, shown by the stand-in graph: replays on the optimisers' old state."""
    monkeypatch.setattr(CapturedStep, "reset", lambda self: None)
    preset, sets, first_capture = CASES["dcgan"]
    tr = _trainer(preset, tmp_path, *sets)
    _with_stand_in_graph(tr)
    for _ in range(first_capture + 2):
        tr.train_step()
    assert tr.captured.replays == 2
    tr.load_state_dict(load_checkpoint(tr.save()))
    with pytest.raises(AssertionError, match=r"has been replaced: opt_g\[0\]\.step, opt_g\[0\]\.exp_avg"):
        tr.train_step()


def test_options_a_capture_cannot_take_are_refused_by_name(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(preset="dcgan-mnist", sets=["cuda_graph=true", "device=cuda", "instance_noise=0.1",
                                                "optimizer_d=sgd", "amp=fp16", "replay_size=128", "balance=true",
                                                "fused_adam=off", "penalty=r1", "penalty_every=4"])
    text = str(err.value)
    for key in ("tricks.instance_noise", "optim.optimizer_g / optimizer_d", "run.amp", "tricks.replay_size",
                "optim.balance", "optim.fused_adam", "loss.penalty_every"):
        assert f"{key}: not with run.cuda_graph" in text, key
    with pytest.raises(ConfigError, match="run.cuda_graph: CUDA graphs need a CUDA device"):
        load_config(preset="dcgan-mnist", sets=["cuda_graph=true", "device=cpu"])
    # every shipped preset on a GPU is either capturable or refused with a reason (no silent eager fallback)
    ok = load_config(preset="wgan-gp-mnist", sets=["cuda_graph=true", "device=cuda"])
    assert ok.run.cuda_graph and ok.run.cuda_graph_warmup == 3
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="run.cuda_graph: needs one CUDA device"):
            _trainer("dcgan-mnist", tmp_path, "cuda_graph=true", "device=auto")


def test_a_failed_capture_says_what_to_do():
    class Refuses:
        def warm(self, fn):
            return fn()

        def record(self, fn):
            raise RuntimeError("operation not permitted when stream is capturing")

    step = CapturedStep(lambda batches: {}, lambda eager_steps: True, torch.device("cpu"), recorder=Refuses())
    with pytest.raises(RuntimeError, match="could not be captured in a CUDA graph .*run.cuda_graph=false"):
        step([(torch.zeros(2), torch.zeros(2))])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("preset, sets", [("dcgan-mnist", ["ema=0.9", "amp=bf16"]),
                                          ("wgan-gp-mnist", ["n_critic=2"])])  # the penalty's double backward
def test_a_captured_run_trains_on_the_gpu(tmp_path, preset, sets):  # pragma: no cover - GPU suite
    sets = ["device=cuda", "impl=auto", "cuda_graph_warmup=2", *sets]
    tr = _trainer(preset, tmp_path / "graph", "cuda_graph=true", *sets)
    assert tr.opt_d.defaults["fused"] and tr.opt_d.defaults["capturable"]
    before = {k: v.clone() for k, v in tr.G.state_dict().items()}
    rows = [tr.train_step() for _ in range(6)]
    assert tr.captured.captured and tr.captured.replays == 4 and tr.captured.eager_steps == 2
    assert all(all(v == v for v in r.values() if isinstance(v, float)) for r in rows)  # no NaN
    assert len({r["loss_d"] for r in rows[2:]}) == 4  # each replay trained on its own batch and z
    after = tr.G.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # the eager code around the replays still works: samples, a checkpoint
    assert tr.write_samples() is not None
    path = tr.save()
    # loaded back, the optimisers' state is new tensors: the run captures again, and its replays update them
    tr.load_state_dict(load_checkpoint(path))
    for _ in range(2):
        tr.train_step()  # eager (warm-up)
    assert not tr.captured.captured
    moments = [s["exp_avg"].clone() for s in tr.opt_g.state.values()]
    for _ in range(2):
        tr.train_step()  # captured, then replayed
    assert tr.captured.captured and tr.captured.replays == 2
    assert any(not torch.equal(m, s["exp_avg"]) for m, s in zip(moments, tr.opt_g.state.values()))


def _capturable_presets():
    from fastgan.train.config import PRESETS
    from fastgan.train.graph_step import config_errors

    names = []
    for name in sorted(PRESETS):
        try:
            cfg = load_config(preset=name, sets=["cuda_graph=true", "device=cuda"])
        except ConfigError:
            continue
        assert config_errors(cfg) == []
        names.append(name)
    return names


CAPTURABLE = _capturable_presets()


def test_the_capturable_presets_are_the_usual_ones():
    assert {"dcgan-mnist", "dcgan-mnist-64", "wgan-gp-mnist", "acgan-mnist", "hinge-sn-mnist"} <= set(CAPTURABLE)
    assert "ganhacks-mnist" not in CAPTURABLE  # instance noise, replay: refused by name


# the tricks the capture takes, beyond the presets': random / smoothed / flipped labels, feature matching,
# minibatch discrimination and stddev, packing, virtual batch norm in G and in D, mode seeking, G dropout
TRICKS = [["random_labels=true", "label_flip=0.1", "feature_matching=1.0", "minibatch=discrimination", "ema=0.9",
           "pack=2", "g_norm=vbn", "mode_seeking=1.0"],
          ["label_smoothing=0.1", "g_dropout=0.1", "d_norm=vbn", "minibatch=stddev", "separate_batches=true"]]


# every other option that changes the step, one kind at a time (each accepted by the capture, so each must
# repeat its step): latents, norms, activations, up / down sampling, spectral norm, conditioning, init,
# residual + attention models, G dropout at sampling, several generators, every loss, weight clipping, every
# gradient penalty, feature matching alone, n_critic, coupled weight decay, one mixed D batch, bf16,
# channels-last, TTUR
OPTIONS = [
    ["z_dist=uniform"], ["g_norm=instance", "d_norm=layer"], ["g_norm=layer", "d_norm=instance"],
    ["g_norm=none", "d_norm=none"], ["g_activation=leaky_relu", "d_activation=relu"], ["downsample=avgpool"],
    ["upsample=pixelshuffle"], ["spectral_norm=true", "g_spectral_norm=true"], ["conditional=embedding"],
    ["conditional=acgan", "generator_classifier=0.5", "aux_weight=0.5"], ["init=default"],
    ["arch=resnet", "attention_res=8"], ["g_dropout=0.1", "g_dropout_sampling=true"], ["num_generators=2"],
    ["loss=minimax"], ["loss=lsgan"], ["loss=hinge"], ["loss=wasserstein", "clip_weights=0.01"],
    *[[f"penalty={kind}", "d_norm=layer"] for kind in ("r1", "r2", "dragan", "wgan-lp", "wgan-gp")],
    ["feature_matching=1.0", "feature_matching_only=true"], ["n_critic=2"],
    ["weight_decay_g=0.01", "weight_decay_d=0.01", "weight_decay_mode=coupled"], ["separate_batches=false"],
    ["amp=bf16"], ["channels_last=on"], ["lr_g=1e-4", "lr_d=4e-4", "beta1=0.0", "beta2=0.9"],
]


@pytest.mark.parametrize("preset, extra", [(name, []) for name in CAPTURABLE]
                         + [("dcgan-mnist", sets) for sets in TRICKS + OPTIONS])
def test_every_step_the_capture_accepts_reads_nothing_back_and_repeats_itself(tmp_path, preset, extra):
    """A read of a device value inside a capture fails it (or, worse, reads a stale value at every replay), and
    so does a tensor made from host data (``torch.tensor(...)``: a host-to-device copy): every preset
    ``run.cuda_graph`` accepts must run its step without either, and issue the same operators with the same
    arguments from one step to the next, as the replays will (checked on CPU, where the same Python runs)."""
    from _train_settings import TINY_TOY

    tiny = TINY_TOY if preset.startswith("toy") else TINY_IMAGE
    data = ["dataset=mnist5k"] if preset == "dcgan-fashion" else []  # the step is under test, not the data
    cfg = load_config(preset=preset, sets=tiny + QUIET + data + [f"out={tmp_path}", "fused_adam=on", "d_pretrain=0",
                                                                 "ema_start=0", *extra])
    assert graph_config_errors(load_config(preset=preset, sets=["cuda_graph=true", "device=cuda", *extra])) == []
    tr = Trainer(cfg, log=lambda s: None)
    tr.train_step()  # warm-up (optimiser state, buffer guard)
    reads = HostReads(from_host=True)
    logs, raw = _logged_steps(tr, reads)
    assert reads.count == 0, reads.seen
    assert torch.is_tensor(raw["_finite_d"]) and torch.is_tensor(raw["_finite_g"])
    assert logs[0] == logs[1]


def _logged_steps(tr, reads=None, steps=2):
    """The operators each of ``steps`` trainer steps issues (what a replay repeats), and the last step's raw
    outputs; ``reads`` (a HostReads) watches them too."""
    logs = []
    for _ in range(steps):
        batches = [tr.stream.next() for _ in range(tr.cfg.optim.n_critic)]  # (outside the graph)
        with reads or contextlib.nullcontext(), OpLog() as log:
            raw = tr._step_tensors(batches)
        tr.step += 1
        logs.append(log.ops)
    return logs, raw


def test_a_falling_pixel_loss_weight_is_refused_as_it_changes_the_step(tmp_path):
    """loss.pixel_decay makes G's loss weight a host constant that changes every step: a graph would keep the
    captured step's.  The pixel loss with a constant weight repeats its step and is accepted."""
    class Paired(Trainer):  # a reconstructive setting (as in test_train_issue13.py)
        def pixel_pair(self, fake, z, labels=None):
            return fake, torch.zeros_like(fake)

    def cfg(out, *sets):
        return load_config(preset="dcgan-mnist", sets=TINY_IMAGE + QUIET + [f"out={out}", "fused_adam=on",
                                                                            "pixel_loss=l1", *sets])

    def graph_errors(*sets):
        return graph_config_errors(load_config(preset="dcgan-mnist", sets=["cuda_graph=true", "device=cuda",
                                                                           "pixel_loss=l1", *sets]))

    with pytest.raises(ConfigError, match="loss.pixel_decay: not with run.cuda_graph"):
        graph_errors("pixel_decay=10")
    assert graph_errors("pixel_warmup=5") == []
    falling = Paired(cfg(tmp_path / "falling", "pixel_decay=10"), log=lambda s: None)
    falling.train_step()
    logs, _ = _logged_steps(falling)
    assert logs[0] != logs[1]  # the weight's multiplication changes its constant
    steady = Paired(cfg(tmp_path / "steady", "pixel_warmup=5"), log=lambda s: None)
    steady.train_step()
    logs, _ = _logged_steps(steady)
    assert logs[0] == logs[1]
