"""The project's networks reproduce the OFFICIAL architectures' outputs (outside truth).

``tests/fixtures/official/<case>.pt`` hold, for tiny variants of every backbone and variant
of ``conf/backbone/*.yaml`` (x2 / x3 / x4, RRDB x1; SwinIR's three upsamplers and its 3conv;
HAT and HAT-S shaped, other conv_scale / overlap_ratio; SwinIR and HAT on inputs that are and
are not multiples of the window), the output of the official code: BasicSR v1.4.2
(651835a1b9d38dbbdaf45750f56906be2364f01a: MSRResNet, RRDBNet, EDSR, SwinIR) and
XPixelGroup/HAT 1638a9a822581657811867bf670717f8371fc3e5 (HAT), with weights from a recipe
that does not involve the project, on a fixed input, in eval mode, fp32, CPU.

Recipe (``tests/fixtures/official/make_official_outputs.py``, whose docstring has the exact
commands): export the official arch files with ``git show <rev>:<path>`` to /tmp/official,
``pip install --target /tmp/official/pylib einops`` (HAT needs it), then
``PYTHONPATH=/tmp/official/pylib .venv/bin/python tests/fixtures/official/make_official_outputs.py
--basicsr /tmp/official/basicsr-v1.4.2 --hat /tmp/official/hat``. Each parameter is a uniform
draw (float64 -> float32) from a generator seeded with ``zlib.crc32(name)``: std 1/sqrt(fan_in)
for weights with >= 2 dims, 0.5 for relative position bias tables, 1 +- 0.1 for LayerNorm
weights, 0.05 for biases; buffers are the official model's own (kept as hashes); the weights
are not stored, the test regenerates them (and checks their hash against the official ones).

Per case: the project's ``build_model`` network (the case's kwargs) must have the official
parameters (name, shape) in the official order and buffers equal to the official ones; filled
by name from the recipe it must reproduce the official output, also with regularisers attached
(dropout at every position, DropPath on every inblock site, Adaptive Dropout on the mid sites
where the net has them) in eval mode, and when the official-named state dict is loaded with
``load_weights`` / ``load_official`` (strict).

Tolerance (``TOLERANCE``): max |project - official| <= 5e-6, every backbone (outputs are of
magnitude <= ~5). Measured here (torch 2.13 CPU): the fixtures were generated with 2 threads;
the test runs with 1 (``_one_thread``), where the CNNs are bit-identical and SwinIR / HAT differ
by up to 8.3e-7 / 1.7e-6 (another matmul blocking reorders float sums); with 2, 3, 4 or 8
threads every case, plain and regularised, is bit-identical. The bound is 3x that worst
case; every mutation tried (a wrong attention scale, even x1.01; EDSR's long skip or res_scale; HAT's
conv_scale ignored or hard-coded; RRDB's 0.2 -> 0.25; SRResNet's bilinear skip; the shift
direction; reflect padding) moves some case's output by >= 1.3e-2. On a GPU (``official_cases``
takes a device) TF32 must be off, and the bound may need widening: it was not measured there.

``official_cases(device)`` yields (case, project model, input, expected, tolerance) for reuse,
e.g. by a GPU check.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from srcore.models import BACKBONES, build_model, load_official, load_weights
from srcore.models.build import check_model

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "official"


def _generator_module():
    spec = importlib.util.spec_from_file_location("make_official_outputs", FIXTURES / "make_official_outputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the recipe; imports no official code
    return module


GEN = _generator_module()
CASES = sorted(p.stem for p in FIXTURES.glob("*.pt"))
TOLERANCE = {"srresnet": 5e-6, "rrdb": 5e-6, "edsr": 5e-6, "swinir": 5e-6, "hat": 5e-6}  # max abs, CPU fp32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from threads, and on a loaded machine OpenMP's spinning makes
    this module several times slower (measured: 8 s vs 30-45 s with 2 threads at load 6)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_fixture(case: str) -> dict:
    return torch.load(FIXTURES / f"{case}.pt", map_location="cpu", weights_only=True)


def recipe_state(fixture: dict) -> dict[str, torch.Tensor]:
    """The official-named parameters of a case, regenerated from the recipe (official order)."""
    return {name: GEN.recipe_value(name, shape) for name, shape in fixture["params"]}


def build_project(fixture: dict, regularizers=()) -> torch.nn.Module:
    p = fixture["project"]
    return build_model(p["name"], p["upscale"], regularizers, **p["kwargs"])


@torch.no_grad()
def fill_from_recipe(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter of ``model`` set by name from the recipe (independent of the fixture)."""
    for name, param in model.named_parameters():
        param.copy_(GEN.recipe_value(name, param.shape))
    return model


def every_regularizer(fixture: dict) -> list[dict]:
    """Dropout at every position the net offers, DropPath on its inblock sites, Adaptive Dropout
    on its mid sites (where it has them)."""
    p = fixture["project"]
    args = check_model(p["name"], p["upscale"], **p["kwargs"])
    sites = BACKBONES[p["name"]].site_names_for(args)
    positions = ["all", *(s for s in sites if not s.startswith(("mid", "inblock")))]
    regs = [{"name": "dropout", "position": positions, "p": 0.5, "kind": "channel"},
            {"name": "droppath", "rate": 0.5, "schedule": "constant"}]
    if any(s.startswith("mid") for s in sites):
        regs.append({"name": "adaptive_dropout", "p": 0.5, "w0": 0.3, "step": 20000, "order": "shallow_first"})
    return regs


def official_cases(device="cpu", regularized: bool = False):
    """(case, project model in eval mode on ``device`` with the recipe's weights, input, official
    output, tolerance) for every fixture; ``regularized``: with ``every_regularizer`` attached."""
    for case in CASES:
        fx = load_fixture(case)
        regs = every_regularizer(fx) if regularized else ()
        model = fill_from_recipe(build_project(fx, regs)).eval().to(device)
        yield (case, model, fx["input"].to(device), fx["output"].to(device),
               TOLERANCE[fx["project"]["name"]])


def max_diff(model, x, expected) -> float:
    with torch.no_grad():
        y = model(x.clone())
    assert y.shape == expected.shape, f"shape {tuple(y.shape)} vs official {tuple(expected.shape)}"
    return (y - expected).abs().max().item()


def test_fixtures_present_and_small():
    assert len(CASES) >= 30, CASES
    total = sum((FIXTURES / f"{c}.pt").stat().st_size for c in CASES)
    assert total < 1024 ** 2, f"fixtures take {total} bytes"
    variants = {c.split("_x")[0] for c in CASES}
    configs = {p.stem for p in (FIXTURES.parents[2] / "conf" / "backbone").glob("*.yaml")}
    assert configs <= variants, f"conf/backbone variants without an official fixture: {configs - variants}"


@pytest.mark.parametrize("case", CASES)
def test_matches_official_architecture(case):
    fx = load_fixture(case)
    model = build_project(fx).eval()

    # the official parameters, by name and shape, in the official order; the recipe reproduces them
    own = dict(model.named_parameters())
    assert [(k, list(v.shape)) for k, v in model.state_dict().items() if k in own] == \
        [(k, list(s)) for k, s in fx["params"]]
    assert GEN.params_sha256(recipe_state(fx).items()) == fx["params_sha256"], "the recipe changed"
    # the official buffers (relative position indices, SwinIR's attn_mask) bit for bit
    buffers = {k: v for k, v in model.state_dict().items() if k not in own}
    assert [(k, list(v.shape), str(v.dtype).removeprefix("torch."), GEN.tensor_sha256(v))
            for k, v in buffers.items()] == [tuple(b) for b in fx["buffers"]]

    fill_from_recipe(model)
    diff = max_diff(model, fx["input"], fx["output"])
    assert diff <= TOLERANCE[fx["project"]["name"]], f"{case}: max |project - official| = {diff:.3g}"


@pytest.mark.parametrize("case", CASES)
def test_regularized_net_in_eval_matches_official(case):
    fx = load_fixture(case)
    regs = every_regularizer(fx)
    model = fill_from_recipe(build_project(fx, regs))
    assert len(model.regularizers) == len(regs)
    placed = [s for s, m in model.site_modules().items() if not isinstance(m, torch.nn.Identity)]
    assert len(placed) == len(model.site_modules()), "a site without a regulariser"
    diff = max_diff(model.eval(), fx["input"], fx["output"])
    assert diff <= TOLERANCE[fx["project"]["name"]], f"{case}: max |project - official| = {diff:.3g}"
    # they do act in training (so the eval equality is not vacuous)
    torch.manual_seed(0)
    assert max_diff(model.train(), fx["input"], fx["output"]) > 1e-3


@pytest.mark.parametrize("case", CASES)
def test_official_named_state_dict_loads_strictly(case, tmp_path):
    fx = load_fixture(case)
    p = fx["project"]
    tol = TOLERANCE[p["name"]]
    # the official state dict: the recipe's parameters + the buffers (checked equal to the official above)
    state = {**recipe_state(fx), **{k: v for k, v in build_project(fx).state_dict().items()
                                    if k not in dict(fx["params"])}}

    model = build_project(fx)
    load_weights(model, {"params": state}, strict=True)
    assert max_diff(model.eval(), fx["input"], fx["output"]) <= tol

    # load_official: settings read off the weights must be the case's; what they cannot say is given
    path = tmp_path / "official.pth"
    torch.save({"params_ema": state}, path)
    read = BACKBONES[p["name"]].settings_from_weights(state)
    for key, value in read.items():
        if key in p["kwargs"]:
            want = p["kwargs"][key]
            assert (list(value) if isinstance(value, (list, tuple)) else value) == \
                (list(want) if isinstance(want, (list, tuple)) else want) or \
                (isinstance(want, float) and math.isclose(value, want)), (key, value, want)
    rest = {k: v for k, v in p["kwargs"].items() if k not in read}
    model = load_official(path, p["name"], p["upscale"], **rest)
    assert max_diff(model, fx["input"], fx["output"]) <= tol


def test_official_cases_helper_yields_every_case():
    seen = [(case, tol) for case, _, _, _, tol in official_cases()]
    assert [c for c, _ in seen] == CASES and all(t > 0 for _, t in seen)
