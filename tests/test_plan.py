"""polyglot-jax plan: ahead-of-time compiles of the real train step for TPU slices, on this CPU machine.

The compile tests need libtpu (in the test extra: pip install -e ".[test]");
without it they skip and say so. Tiny models keep every compile to seconds.
"""

import json
import os
import subprocess
import sys

import pytest

from polyglot_jax import configs as config_lib
from polyglot_jax.data.languages import MC4_LANGUAGES
from polyglot_jax.plan import aot, hlo, report, run_plan, search, topologies
from polyglot_jax.errors import PlanError
from conftest import REPO

needs_libtpu = pytest.mark.skipif(
    not topologies.libtpu_available(),
    reason="needs libtpu for ahead-of-time TPU compiles: pip install -e '.[test]' (or '.[tpu]')")

# Compiled FLOPs vs models/flops.py (6·N + 12·layers·heads·head_dim·seq per token) with remat
# none and one attention block (the formula's full L×L attention): the compiler also counts
# softmax, norms, RoPE and the optimizer update, a few percent of a d_model=128 model's matmuls.
FLOPS_TOLERANCE = 0.10


@pytest.fixture(autouse=True, scope="module")
def _no_cached_tpu_executables():
  """Keeps this module's TPU compiles out of the session's compilation cache (conftest.py).

  A compile-only TPU client cannot load a cached executable back (jax warns and compiles again), so
  writing them would only cost time.
  """
  import jax
  before = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1e9)
  yield
  jax.config.update("jax_persistent_cache_min_compile_time_secs", before)


def tiny_config(**overrides):
  """A 2-layer d_model=128 decoder, bf16 compute; the planner needs no data files."""
  c = config_lib.default_config()
  c.lock()
  values = {"model.vocab_size": 1024, "model.d_model": 128, "model.num_layers": 2, "model.num_heads": 4,
            "model.num_kv_heads": 4, "model.mlp_dim": 256, "model.dtype": "bfloat16", "model.scan_layers": True,
            "model.remat_policy": "none", "model.attention_block": 0, "data.seq_len": 256,
            "data.global_batch_size": 16, "train.num_steps": 100}
  values.update({k.replace("__", "."): v for k, v in overrides.items()})
  for key, value in values.items():
    config_lib.set_key(c, key, value, from_string=False)
  config_lib.validate(c)
  return c


# ---------------------------------------------------------------------------
# Bad input: one-line errors that name both numbers (no compile, no libtpu)
# ---------------------------------------------------------------------------


def test_unknown_topology_lists_the_known_ones():
  with pytest.raises(PlanError) as e:
    topologies.get("v9-8")
  assert "unknown TPU topology 'v9-8'" in str(e.value)
  for name in ("v4-8", "v5e-8", "v5p-256", "v6e-256"):
    assert name in str(e.value)
  assert topologies.get("v5litepod-16").name == "v5e-16"


def test_slice_names_count_chips_or_cores():
  assert topologies.get("v5p-256").chips == 128  # TensorCores, 2 per chip.
  assert topologies.get("v4-8").chips == 4
  assert topologies.get("v5e-8").chips == 8 and topologies.get("v6e-256").chips == 256
  assert topologies.get("v5p-128").topology_name == "v5p:4x4x4" and topologies.get("v5p-128").wrap == (True,) * 3


def test_mesh_product_must_match_the_chip_count():
  with pytest.raises(PlanError, match=r"mesh fsdp=64,tensor=4 needs 256 chips but v5p-256 has 128"):
    aot.mesh_sizes(aot.parse_mesh("fsdp=64,tensor=4"), topologies.get("v5p-256"))
  assert aot.mesh_sizes({"fsdp": -1, "tensor": 4}, topologies.get("v5p-256")) == \
      {"data": 1, "fsdp": 32, "tensor": 4, "expert": 1}
  with pytest.raises(PlanError, match="axis=size"):
    aot.parse_mesh("fsdp:4")


def test_model_dimension_must_divide_by_its_mesh_axis():
  config = tiny_config(model__num_heads=8)
  with pytest.raises(PlanError, match=r"config.model.num_kv_heads=4 is not divisible by mesh tensor=8"):
    aot.check_divisible(config, {"data": 1, "fsdp": 1, "tensor": 8, "expert": 1})
  with pytest.raises(PlanError, match=r"global_batch_size=16 .* not divisible by mesh data×fsdp×expert=32"):
    aot.check_divisible(config, {"data": 1, "fsdp": 32, "tensor": 1, "expert": 1})
  # The expert axis splits the batch too (outside the MoE layers it is one more data axis).
  moe = tiny_config(model__num_experts=4)
  assert aot.batch_shards(moe, {"data": 2, "fsdp": 4, "tensor": 2, "expert": 2}) == 16
  with pytest.raises(PlanError, match=r"global_batch_size=16 .* not divisible by mesh data×fsdp×expert=32"):
    aot.check_divisible(moe, {"data": 1, "fsdp": 8, "tensor": 1, "expert": 4})


def test_oom_message_is_parsed():
  message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
             "(332.44G) exceeds available HBM (95.74G).")
  required, available, what = aot.parse_oom(message)
  assert required == pytest.approx(332.44 * 2 ** 30) and available == pytest.approx(95.74 * 2 ** 30)
  assert what == "HLO temporaries"


# ---------------------------------------------------------------------------
# HLO walking: collectives inside loops count once per iteration
# ---------------------------------------------------------------------------

_LOOP_HLO = """HloModule m

%body (p: (s32[], f32[8,128])) -> (s32[], f32[8,128]) {
  %p = (s32[], f32[8,128]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[8,128] get-tuple-element(%p), index=1
  %ag = f32[64,128]{1,0} all-gather(%x), dimensions={0}, replica_groups={{0,1,2,3,4,5,6,7}}
  %cc = f32[8,128]{1,0} custom-call(%x), custom_call_target="ConcatBitcast"
  %rs = f32[8,128]{1,0} reduce-scatter(%ag), dimensions={0}, to_apply=%add
  ROOT %t = (s32[], f32[8,128]) tuple(%i, %rs)
}

%cond (p: (s32[], f32[8,128])) -> pred[] {
  %p = (s32[], f32[8,128]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(3)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (a: f32[8,128]) -> f32[8,128] {
  %a = f32[8,128] parameter(0)
  %z = s32[] constant(0)
  %t = (s32[], f32[8,128]) tuple(%z, %a)
  %w = (s32[], f32[8,128]) while(%t), condition=%cond, body=%body
  %r = f32[8,128]{1,0} all-reduce(%a), replica_groups={{0,1,2,3,4,5,6,7}}, to_apply=%add
  ROOT %o = f32[8,128] get-tuple-element(%w), index=1
}
"""


_SPLASH_HLO = """HloModule m

ENTRY %main (a: f32[8]) -> f32[8] {
  %a = f32[8] parameter(0)
  %splash_mha_fwd_segmented_residuals.1 = (f32[2,512,128]{2,1,0:T(8,128)}, bf16[2,8,1024,128]{3,2,1,0:T(8,128)(2,1)}) custom-call(%a, %a), custom_call_target="tpu_custom_call", operand_layout_constraints={s8[1,2,2]{2,1,0}, s8[1,2,2]{2,1,0}, bf16[2,8,1024,128]{3,2,1,0}, bf16[2,4,1024,128]{3,2,1,0}, bf16[2,4,1024,128]{3,2,1,0}, s32[2,1024,128]{2,1,0}}
  %splash_mha_dkv_segmented_no_residuals.1 = (bf16[2,4,1024,128]{3,2,1,0}) custom-call(%a, %a), custom_call_target="tpu_custom_call", operand_layout_constraints={s8[1,2,2]{2,1,0}, s8[1,2,2]{2,1,0}, bf16[2,8,1024,128]{3,2,1,0}, bf16[2,4,1024,128]{3,2,1,0}}
  %cc = f32[8] custom-call(%a), custom_call_target="ConcatBitcast"
  ROOT %o = f32[8] add(%a, %a)
}
"""


def test_pallas_kernels_are_costed_by_the_planner():
  # The cost model scores a Pallas kernel (tpu_custom_call) by its memory traffic, not as −1 s,
  # and counts no FLOPs inside it: splash's matmuls come from its operand shapes.
  assert hlo.uncosted_custom_calls(_SPLASH_HLO) == 1  # ConcatBitcast only.
  # The pair around a scatter offloaded to the SparseCore scores −1 s each too.
  offload = ('  %p = s32[] custom-call(), custom_call_target="PrepareAsyncCallStart"\n'
             '  %d = token[] custom-call(%p), custom_call_target="PrepareAsyncCallDone"\n')
  assert hlo.uncosted_custom_calls(_SPLASH_HLO.replace("  ROOT %o", offload + "  ROOT %o")) == 3
  found = hlo.splash_kernels(_SPLASH_HLO)
  assert found["calls"] == {"fwd": 1, "dq": 0, "dkv": 1} and found["unparsed"] == 0
  # Rows 2, heads 8, head_dim 128, 1024 tokens in 2 blocks of 512: 3 of the 4 block pairs are causal.
  assert found["flops"] == (2 + 4) * 2 * 2 * 8 * 128 * 512 * 512 * 3


_GMM_HLO = """HloModule m

ENTRY %main (a: f32[8]) -> f32[8] {
  %a = f32[8] parameter(0)
  %jvp_jit_gmm__.16 = bf16[4096,1024]{1,0:T(8,128)(2,1)} custom-call(%a), custom_call_target="tpu_custom_call", operand_layout_constraints={s32[], s32[6]{0}, s32[36]{0}, s32[36]{0}, s32[1]{0}, bf16[4096,512]{1,0}, bf16[4,512,1024]{2,1,0}}, frontend_attributes={x="y"}
  %transpose_jvp_jit_gmm___.88 = bf16[4096,512]{1,0:T(8,128)(2,1)} custom-call(%a), custom_call_target="tpu_custom_call", operand_layout_constraints={s32[], s32[6]{0}, s32[36]{0}, s32[36]{0}, s32[1]{0}, bf16[4096,1024]{1,0}, bf16[4,512,1024]{2,1,0}}, frontend_attributes={x="y"}
  %transpose_jvp_jit_tgmm___.2 = bf16[4,512,1024]{2,1,0:T(8,128)(2,1)} custom-call(%a), custom_call_target="tpu_custom_call", operand_layout_constraints={s32[], s32[6]{0}, s32[36]{0}, s32[36]{0}, s32[1]{0}, bf16[4096,512]{1,0}, bf16[4096,1024]{1,0}}, frontend_attributes={x="y"}
  ROOT %o = f32[8] add(%a, %a)
}
"""


def test_grouped_matmul_kernels_are_counted_from_their_operands():
  # The three megablox calls of one gmm's forward and backward (compiled for v5p from jax's kernels):
  # rows [4096, 512] × 4 experts [512, 1024] forward, the row gradient, the weight gradient: 3 · 2·m·k·n.
  found = hlo.grouped_matmul_kernels(_GMM_HLO)
  assert found == {"calls": {"gmm": 2, "tgmm": 1}, "flops": 3 * 2.0 * 4096 * 512 * 1024, "unparsed": 0}
  assert hlo.grouped_matmul_kernels(_SPLASH_HLO)["calls"] == {"gmm": 0, "tgmm": 0}  # Splash is not one.
  assert hlo.splash_kernels(_GMM_HLO)["calls"] == {"fwd": 0, "dq": 0, "dkv": 0}


def test_collectives_multiply_loop_bodies_by_their_trip_count():
  found = hlo.collectives(_LOOP_HLO)
  assert found["all-gather"] == {"count": 3, "bytes": 3 * 64 * 128 * 4}
  assert found["reduce-scatter"] == {"count": 3, "bytes": 3 * 64 * 128 * 4}  # The array it reduces.
  assert found["all-reduce"] == {"count": 1, "bytes": 8 * 128 * 4}
  assert found["unknown_trip_counts"] == []
  assert hlo.uncosted_custom_calls(_LOOP_HLO) == 1  # Counted once, as cost_analysis counts loop bodies.



def test_collectives_over_one_device_groups_move_nothing():
  # A psum over mesh axes of size 1 compiles to an all-reduce whose groups each hold one device.
  ops = {"{{0},{1},{2},{3}}": 0, "[4,1]<=[4]": 0, "{{0,1},{2,3}}": 1, "[2,2]<=[4]": 1}
  for groups, moves in ops.items():
    text = _LOOP_HLO.replace("replica_groups={{0,1,2,3,4,5,6,7}}", f"replica_groups={groups}")
    assert hlo.collectives(text)["all-reduce"] == {"count": moves, "bytes": moves * 8 * 128 * 4}, groups

# ---------------------------------------------------------------------------
# Compiling for a real topology (libtpu)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_plan():
  return aot.plan_step(tiny_config(), "v5e-8")


@needs_libtpu
def test_topology_devices_under_the_fake_cpu_platform():
  import jax
  assert jax.devices()[0].platform == "cpu"  # conftest's 8 fake CPU devices stay the default.
  devices = topologies.devices("v4-8")
  assert len(devices) == 4 and devices[0].platform == "tpu"


@needs_libtpu
def test_tiny_step_compiles_for_v5e_8(tiny_plan):
  p = tiny_plan
  assert p.fits and p.memory_source == "memory_analysis"
  assert p.mesh == {"data": 1, "fsdp": 8, "tensor": 1, "expert": 1}
  assert 0 < p.hbm_needed_bytes < p.hbm_available_bytes == 15.75 * 2 ** 30
  # The state's own bytes (before the TPU pads small dims to its tiles) are part of the arguments.
  assert 0 < p.memory["state"] <= p.memory["arguments"]
  assert p.collectives["all-gather"]["count"] > 0 and p.collectives["all-gather"]["bytes"] > 0  # FSDP.
  assert p.step_seconds > 0 and 0 < p.mfu < 1
  assert p.tokens_per_sec_per_chip == pytest.approx(16 * 256 / p.step_seconds / 8)


@needs_libtpu
def test_compiled_flops_agree_with_the_model_formula(tiny_plan):
  # attention_impl auto is splash on TPU: its backward recomputes QKᵀ in both kernels (9 matmuls per
  # block pair against the formula's 6), and with one 256-token block nothing is skipped, so the
  # step computes the formula's attention term × 1.5. The compiler counts none of it; the planner adds it.
  assert tiny_plan.attention == "splash"
  c = tiny_config()
  attention = 12 * 2 * 4 * 32 * 256 * tiny_plan.tokens_per_step  # 12·layers·heads·head_dim·seq per token.
  assert tiny_plan.cost_added["splash_flops"] * 8 == pytest.approx(attention * 1.5)
  expected = tiny_plan.model_flops_per_step + attention / 2
  ratio = tiny_plan.compiled_flops_per_step / expected
  assert abs(ratio - 1) < FLOPS_TOLERANCE, f"compiled/model FLOPs = {ratio:.3f}"
  assert c.model.num_layers == 2 and tiny_plan.ce_chunks == (0, 0)


@needs_libtpu
def test_scanned_collectives_match_unrolled_ones(tiny_plan):
  unrolled = aot.plan_step(tiny_config(model__scan_layers=False), "v5e-8", estimate_cost=False)
  scanned, flat = tiny_plan.collectives["all-gather"]["bytes"], unrolled.collectives["all-gather"]["bytes"]
  assert scanned == pytest.approx(flat, rel=0.25), (scanned, flat)


@needs_libtpu
def test_state_too_large_for_the_chips_is_reported_with_numbers():
  # ~70B parameters × 12 bytes (float32 weights + AdamW moments) over 8 v5e chips of 15.75 GiB.
  big = tiny_config(model__vocab_size=32000, model__d_model=8192, model__num_layers=80, model__num_heads=64,
                    model__num_kv_heads=8, model__mlp_dim=28672)
  p = aot.plan_step(big, "v5e-8")
  assert not p.fits and p.parameters > 65e9
  assert p.note.startswith("does not fit: needs ") and "of 15.75 GiB per chip" in p.note
  assert p.hbm_needed_bytes / 2 ** 30 > 90


@needs_libtpu
def test_activations_too_large_are_reported_with_the_compilers_numbers():
  # Small weights, but 64 rows × 2048 tokens of float32 logits over a 32k vocabulary per chip
  # (chunked cross-entropy off: with it, the default, the same step fits).
  shape = dict(model__vocab_size=32000, model__num_layers=1, data__seq_len=2048, data__global_batch_size=512)
  p = aot.plan_step(tiny_config(model__ce_chunk_size=0, **shape), "v5e-8", estimate_cost=False)
  assert not p.fits
  assert p.memory_source.startswith(("memory_analysis", "compile error"))
  assert p.note.startswith("does not fit: needs ") and "GiB per chip" in p.note
  assert p.hbm_needed_bytes > p.hbm_available_bytes
  chunked = aot.plan_step(tiny_config(**shape), "v5e-8", estimate_cost=False)
  assert chunked.fits and chunked.hbm_needed_bytes < p.hbm_needed_bytes / 2


@needs_libtpu
def test_search_ranks_fitting_candidates_by_estimated_step_time():
  lines = []
  result = search.search(tiny_config(), "v4-8", remats=("none", "full"), max_compiles=6, log=lines.append)
  assert result.ranked, lines
  assert all(p.fits and p.step_seconds > 0 for p in result.ranked)
  assert [p.step_seconds for p in result.ranked] == sorted(p.step_seconds for p in result.ranked)
  assert result.compiles <= 6
  assert any("compile 1/6" in line for line in lines)  # Progress names each candidate.


def test_expert_axis_must_divide_num_experts():
  config = tiny_config(model__num_experts=6)
  with pytest.raises(PlanError, match=r"^config.model.num_experts=6 is not divisible by mesh expert=4 "):
    aot.check_divisible(config, {"data": 1, "fsdp": 2, "tensor": 1, "expert": 4})
  aot.check_divisible(config, {"data": 1, "fsdp": 4, "tensor": 1, "expert": 2})
  # The search offers only expert sizes that divide num_experts, and none to a dense model.
  meshes, rejected = search.mesh_candidates(config, 8)
  assert {m["expert"] for m in meshes} == {1, 2} and rejected["config.model.num_experts"] > 0
  assert {m["expert"] for m in search.mesh_candidates(tiny_config(model__num_experts=4), 8)[0]} == {1, 2, 4}
  assert {m["expert"] for m in search.mesh_candidates(tiny_config(), 8)[0]} == {1}


def test_sequence_parallel_rule():
  config = tiny_config()
  assert not aot.is_sequence_parallel(config)
  on = aot.with_sequence_parallel(config, True)
  assert aot.is_sequence_parallel(on) and ("act_length", "tensor") in on.logical_axis_rules
  assert not aot.is_sequence_parallel(aot.with_sequence_parallel(on, False))
  assert len(on.logical_axis_rules) == len(config.logical_axis_rules)


def test_search_tries_expert_meshes_and_sequence_parallelism(monkeypatch):
  """The search's loop without compiling: a fake plan_step fits every candidate with sequence parallelism."""
  seen = []

  def fake_plan_step(config, topology, mesh=None, estimate_cost=True, log=None):
    sp = aot.is_sequence_parallel(config)
    seen.append((dict(mesh), config.model.remat_policy, sp))
    fits = sp or mesh["tensor"] == 1
    return aot.StepPlan(topology=topology, chips=4, mesh=dict(mesh), remat_policy=config.model.remat_policy,
                        global_batch_size=16, grad_accum_steps=1, seq_len=256, parameters=1, fits=fits,
                        hbm_needed_bytes=1.0 if fits else 1e12, hbm_available_bytes=2.0, memory_source="fake",
                        sequence_parallel=sp, tokens_per_step=4096, model_flops_per_step=1e9)

  def fake_probe_cost(config, sizes, devices, num_languages, log, peak_flops=None):
    return 1e9, 1.0 + sizes["tensor"] + 2 * sizes["expert"], {"probe_1_layer": 0.0, "probe_2_layer": 0.0}, {}

  monkeypatch.setattr(aot, "plan_step", fake_plan_step)
  monkeypatch.setattr(aot, "probe_cost", fake_probe_cost)
  config = tiny_config(model__num_experts=4)
  result = search.search(config, "v4-8", remats=("none",), max_compiles=40, log=lambda line: None)
  meshes = [m for m, _, _ in seen]
  assert any(m["expert"] == 2 for m in meshes) and any(m["expert"] == 4 for m in meshes)
  # tensor > 1: without sequence parallelism first, then with it; tensor 1 never tries it.
  tensor2 = [sp for m, _, sp in seen if m["tensor"] == 2]
  assert tensor2[:2] == [False, True]
  assert not any(sp for m, _, sp in seen if m["tensor"] == 1)
  assert all(p.fits for p in result.ranked)
  assert result.ranked[0].mesh == {"data": 1, "fsdp": 4, "tensor": 1, "expert": 1}
  assert any(p.sequence_parallel for p in result.ranked)
  with pytest.raises(PlanError, match="--sequence_parallel maybe"):
    search.search(config, "v4-8", sequence_parallel="maybe")


@needs_libtpu
def test_moe_plan_on_an_expert_mesh_reports_all_to_all():
  # Dropless dispatch over experts 2 × fsdp 2; the report names all-to-all even when the compiler emits none.
  config = tiny_config(model__num_experts=4, model__moe_top_k=2, model__attention_impl="xla",
                       model__num_layers=1, data__global_batch_size=8, data__seq_len=128)
  p = aot.plan_step(config, "v4-8", mesh={"fsdp": 2, "expert": 2}, estimate_cost=False)
  assert p.fits and p.mesh == {"data": 1, "fsdp": 2, "tensor": 1, "expert": 2}
  assert set(hlo.KINDS) <= set(p.collectives) and p.collectives["all-to-all"]["count"] >= 0
  table = report.format_step(p, config, topologies.get("v4-8"))
  assert "4 experts, top-2" in table and "all-to-all" in table
  with pytest.raises(PlanError, match=r"num_experts=4 is not divisible by mesh expert=8"):
    aot.plan_step(tiny_config(model__num_experts=4), "v4-16", mesh={"expert": 8})


@needs_libtpu
def test_sequence_parallel_step_with_chunked_cross_entropy_is_costed():
  # 2048 tokens in 4 chunks of 512: the probes count one chunk of each loop; the planner adds the other 3.
  config = aot.with_sequence_parallel(tiny_config(model__attention_impl="xla", model__ce_chunk_size=512,
                                                  model__num_layers=1, data__global_batch_size=8), True)
  p = aot.plan_step(config, "v4-8", mesh={"fsdp": 2, "tensor": 2})
  assert p.fits and p.sequence_parallel and p.ce_chunks == (4, 512)
  assert "sequence parallel (act_length → tensor)" in report.format_step(p, config, topologies.get("v4-8"))
  # One chunk: the head matmul and the two gradient matmuls, all in the forward loop (no recompute), 6·c·E·V.
  assert p.cost_added["ce_loop_flops"] * 4 == pytest.approx(3 * 6 * 512 * 128 * 1024, rel=0.1)
  assert p.cost_added["ce_loop_seconds"] > 0 and p.step_seconds > p.cost_added["ce_loop_seconds"]


def test_mesh_candidates_respect_divisibility():
  meshes, rejected = search.mesh_candidates(tiny_config(), 8)
  assert meshes[0] == {"data": 1, "fsdp": 8, "tensor": 1, "expert": 1}
  assert all(m["tensor"] in (1, 2, 4) and m["expert"] == 1 for m in meshes)
  assert "config.model.num_heads" in rejected or "config.model.num_kv_heads" in rejected
  assert search.accum_options(tiny_config(), {"data": 1, "fsdp": 8, "tensor": 1, "expert": 1}) == [1, 2]


# ---------------------------------------------------------------------------
# The run plan (data side; no compile)
# ---------------------------------------------------------------------------


def test_mc4_table_covers_the_registry():
  sizes = run_plan.mc4_token_counts()
  assert set(sizes) == set(MC4_LANGUAGES)
  assert sum(sizes.values()) == pytest.approx(6.3e12, rel=0.01)  # mT5 paper: mC4 is 6.3T tokens.
  assert sizes["eng"] == 2733e9 and sizes["yor"] == 0.05e9


def test_run_plan_for_200b_over_101_languages():
  config = config_lib.load_config(os.path.join(REPO, "configs", "scale_200b.py"))
  run = run_plan.run_plan(config, step_seconds=20.0)
  assert run["method"] == "unimax" and len(run["languages"]) == 101
  assert run["total_tokens"] == run["steps"] * 1024 * 4096 >= 4e12
  assert sum(r["tokens"] for r in run["languages"]) == pytest.approx(run["total_tokens"])
  assert max(r["epochs"] for r in run["languages"]) <= 4.0 + 1e-9
  assert run["days"] == pytest.approx(run["steps"] * 20.0 / 86400)
  # UniMax: languages below their cap share the budget uniformly, and get at least what any capped one gets.
  capped = [r["tokens"] for r in run["languages"] if r["epochs"] >= 4.0 - 1e-9]
  free = [r["tokens"] for r in run["languages"] if r["epochs"] < 4.0 - 1e-9]
  assert capped and free and max(free) == pytest.approx(min(free)) and min(free) >= max(capped)


def test_run_plan_rejects_a_language_without_a_size(monkeypatch):
  sizes = {k: v for k, v in run_plan.mc4_token_counts().items() if k != "swa"}
  monkeypatch.setattr(run_plan, "mc4_token_counts", lambda: sizes)
  with pytest.raises(PlanError, match=r"\['swa'\]"):
    run_plan.run_plan(tiny_config(data__languages=("eng", "swa")), None)


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=REPO)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # TPU executables are not cached (see _no_cached_tpu_executables).
  return subprocess.run([sys.executable, "-m", "polyglot_jax", "plan", *args], capture_output=True, text=True,
                        timeout=300, env=env, cwd=REPO)


def test_cli_bad_topology_is_one_line():
  result = _cli("--config", "configs/scale_1b.py", "--topology", "v5p-7")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith("error: unknown TPU topology 'v5p-7'; known: v4-8")


@needs_libtpu
def test_cli_writes_table_and_json(tmp_path):
  config_path = tmp_path / "tiny.py"
  config_path.write_text("import json\nfrom polyglot_jax.configs import config_from_dict\n\n\ndef get_config():\n"
                         f"  return config_from_dict(json.loads({config_lib.to_json(tiny_config())!r}))\n")
  out = tmp_path / "plan.json"
  result = _cli("--config", str(config_path), "--topology", "v4-8", "--no_cost", "--json", str(out),
                "--config.data.languages=eng,swa")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "HBM per chip" in result.stdout and "→ fits" in result.stdout
  plan = json.loads(out.read_text())
  assert plan["step"]["fits"] and plan["chips"] == 4
  assert [r["lang"] for r in plan["run"]["languages"]] == ["eng", "swa"]
