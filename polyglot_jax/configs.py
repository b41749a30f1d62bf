"""Config helpers: the defaults, loading a config file, overrides, durations.

Every field is defined and commented once, in ``default_config``; experiment
files in configs/ start from it and change what they need. Configs are locked
before overrides apply, so a mistyped key is an error naming the key, and a
value of the wrong type is an error naming the key and the expected type.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
from typing import Any, Iterable, Sequence

import ml_collections
from ml_collections import ConfigDict
from polyglot_jax.errors import ConfigError  # noqa: F401  (re-exported)




DEFAULT_RULES = (
    # Parameters. FSDP shards the embed dim of every weight; tensor parallelism
    # splits heads, MLP hidden units and the vocabulary.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("expert", "expert"),
    # Activations. The batch is split over (data, fsdp, expert); activation feature
    # dims use their own names so that a weight's embed→fsdp rule does not
    # also shard activations along the axis their batch already uses.
    ("batch", ("data", "fsdp", "expert")),
    ("length", None),
    # The residual stream's length between blocks (decoder.py, attention.out, mlp.out):
    # ("act_length", "tensor") shards it over the tensor axis (sequence parallelism,
    # docs/scale.md); inside attention and the MLP the length stays whole.
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def default_config() -> ConfigDict:
  """Every config field with its default; experiment configs start here."""
  c = ConfigDict()
  c.seed = 0  # PRNG seed for parameter init and the data order.
  c.objective = "lm"  # Training objective by registry name (objectives/): lm (causal LM), stack (weighted sum).
  # Start a fresh run from these parameters: a workdir written by `polyglot-jax convert`
  # (or any workdir of the same model shape), or a Hugging Face directory of safetensors.
  # Ignored once the workdir has a checkpoint of its own (resume wins).
  c.init_from = ""

  c.model = ConfigDict()
  c.model.vocab_size = 32000  # Rows of the embedding; must cover the tokenizer.
  c.model.d_model = 512  # Residual stream width.
  c.model.num_layers = 8  # Decoder blocks.
  c.model.num_heads = 8  # Query heads.
  c.model.num_kv_heads = 8  # Key/value heads (grouped-query attention when < num_heads).
  c.model.head_dim = 0  # Per-head width; 0 means d_model // num_heads.
  c.model.mlp_dim = 1376  # SwiGLU hidden width.
  c.model.rope_theta = 10000.0  # RoPE base frequency.
  c.model.norm_eps = 1e-6  # RMSNorm epsilon.
  c.model.tie_embeddings = True  # Output head shares the embedding matrix.
  c.model.qkv_bias = False  # Bias on q/k/v projections (Qwen2 has it).
  c.model.dtype = "float32"  # Compute dtype: float32 | bfloat16.
  c.model.param_dtype = "float32"  # Storage dtype of parameters and optimizer state.
  c.model.init_std = 0.02  # Std of the normal initialiser of every matrix.
  c.model.scan_layers = True  # lax.scan over stacked layers (fast compiles) or unrolled.
  # Per-layer rematerialisation: none | dots | full. "dots" keeps the matmul outputs and
  # recomputes the elementwise work: with scanned layers on CPU it is 1.18x faster than
  # "none" and holds half the temporaries (docs/performance.md), and it is the usual choice
  # at scale.
  c.model.remat_policy = "dots"
  c.model.attention_block = 64  # xla attention in square tiles of this many tokens (0: one block).
  # Attention kernel (models/attention.py): xla (block-causal einsums, any backend) |
  # dot_product_attention (jax.nn.dot_product_attention; cuDNN flash on GPU when it fits) |
  # cudnn (cuDNN flash only, GPU, bf16/fp16; an error elsewhere) | splash (Pallas TPU splash
  # attention) | auto (splash on TPU, cuDNN on GPU when it fits, else xla).
  c.model.attention_impl = "auto"
  # LM head + cross-entropy over token chunks, never building the float32 [tokens, vocab] logits
  # (models/chunked_ce.py): -1 auto (chunked when a micro-batch's logits exceed ce_chunk_threshold_bytes,
  # chunks of ≤ 64 MiB of logits), 0 off, N > 0 chunks of N tokens.
  c.model.ce_chunk_size = -1
  c.model.ce_chunk_threshold_bytes = 256 * 2**20  # Auto mode: float32 logits bytes (tokens·vocab·4) above which to chunk.
  # Mixture of experts (docs/moe.md). 0 keeps the model dense; N > 0 makes the chosen layers' FFN N SwiGLU experts.
  c.model.num_experts = 0
  c.model.moe_top_k = 2  # Experts each token is sent to; their router weights are renormalised to sum to 1.
  c.model.moe_layers = "all"  # Which layers are MoE: all | every:K (layers i with i % K == K-1) | a list "0,2,5".
  c.model.moe_dispatch = "dropless"  # dropless (sorted tokens, grouped matmul) | capacity (fixed buffers, overflow dropped).
  # dropless dispatch's grouped matmul: auto (megablox Pallas kernels on TPU, ragged_dot on GPU, a blocked loop
  # on CPU) | megablox (TPU only, or Pallas interpret mode) | ragged_dot | blocked.
  c.model.moe_grouped_matmul = "auto"
  c.model.moe_capacity_factor = 1.25  # capacity dispatch: each expert holds ceil(factor * tokens * top_k / num_experts).
  c.model.moe_shared_experts = 0  # Dense SwiGLU of width mlp_dim * this added for every token (0: none).

  c.mesh = ConfigDict()  # Mesh axis sizes; one may be -1 (= the rest of the devices).
  c.mesh.data = 1  # Pure data parallelism (parameters replicated).
  c.mesh.fsdp = -1  # Data parallelism with parameters and optimizer state sharded.
  c.mesh.tensor = 1  # Tensor (model) parallelism over heads / MLP / vocab.
  c.mesh.expert = 1  # Expert parallelism (MoE layers).
  c.logical_axis_rules = DEFAULT_RULES  # Logical axis name → mesh axis (or None).

  c.data = ConfigDict()
  # Input pipeline. packed: reads, tokenizes and packs everything in memory at start
  # (small corpora, the demo); grain: streams JSONL / ArrayRecord through a grain
  # MapDataset (per-host shards, shuffle, mixture, packing; resumable by index);
  # seqio: per-language seqio Tasks (TFDS c4/multilingual or wiki40b, or local files)
  # mixed by a seqio Mixture. All three yield the same batch fields.
  c.data.backend = "packed"
  # Record kind of the data files (data/records.py): text ({"text", "lang"}); instruction
  # ({"instruction", "input", "output"}) or chat ({"messages": [...]}) with prompt tokens masked;
  # preference ({"prompt", "chosen", "rejected"}); word_pairs / word_groups (dictionaries).
  # The objective's batch spec must be a subset of the fields the kind gives.
  c.data.kind = "text"
  # Packing of documents into rows: best_fit puts each document into the open row with the least
  # room that still holds it (packed: all rows open; grain/seqio: data.open_rows open rows);
  # greedy closes a row when the next piece does not fit (the layout of earlier versions).
  c.data.packing = "best_fit"
  c.data.open_rows = 8  # grain/seqio best_fit: rows kept open per host (their contents go into checkpoints).
  c.data.template = "alpaca"  # instruction records: alpaca | plain (data/records.py TEMPLATES).
  c.data.source = "jsonl"  # packed backend: jsonl = files of {"text", "lang"} records; demo = the offline demo corpus.
  c.data.train_files = ()  # Glob patterns of training files of {"text", "lang"} records (.jsonl, .arrayrecord).
  c.data.eval_files = ()  # Glob patterns of held-out files, same format (per-language perplexity).
  # Per-language files: (("swa", "corpus/swa/*.jsonl"), ...); every record is in that language.
  # grain: .jsonl / .arrayrecord; seqio also .txt (a document per line) and .tfrecord (tf.train.Example "text").
  c.data.language_files = ()
  c.data.language_eval_files = ()  # Likewise, held-out.
  c.data.tfds_name = ""  # seqio: "c4/multilingual:3.1.0" or "wiki40b:1.3.0" (or a local TFDS name) for data.languages.
  c.data.tfds_data_dir = ""  # seqio: TFDS data_dir (e.g. gs://bucket/tfds); empty = the TFDS default.
  c.data.size_sample_docs = 256  # grain/seqio: documents tokenized per language to estimate its size in tokens.
  c.data.grain_workers = 0  # grain: worker processes reading + tokenizing (0 = threads in the trainer).
  c.data.grain_read_threads = 2  # grain: threads reading + tokenizing when grain_workers is 0.
  # grain/seqio resume with a different number of hosts: "error" stops with a message;
  # "restart" starts every host's shard of the data afresh (documents may repeat).
  c.data.on_host_change = "error"
  c.data.tokenizer = ""  # SentencePiece .model path; for source=demo, built under demo_dir.
  c.data.languages = ()  # Language codes; their order gives lang_ids. Empty: as found in the data.
  c.data.seq_len = 512  # Tokens per packed row.
  c.data.global_batch_size = 8  # Rows per step over all hosts.
  c.data.shuffle_seed = 0  # Seed of the document and row order.
  c.data.demo_dir = ""  # Where the demo corpus and tokenizer are built; empty: WORKDIR/demo_data.
  c.data.eval_max_rows = 0  # Cap on held-out rows per language; 0 means all.
  c.data.mixture = ConfigDict()  # How often each language is sampled (data/mixing.py).
  c.data.mixture.method = "proportional"  # proportional | temperature | unimax | weights.
  c.data.mixture.alpha = 0.3  # temperature: p ∝ tokens^alpha (mT5: 0.3).
  c.data.mixture.max_epochs = 1.0  # unimax: no language repeats more often than this.
  c.data.mixture.weights = ()  # weights: (("eng", 1.0), ("swa", 3.0), ...); unlisted languages get 0.
  # Input-only code-switching of text records (PreAlign; data/codeswitch.py, docs/data.md): a dictionary
  # word of the input is replaced by a translation while the labels keep the original word.
  c.data.code_switch = ConfigDict()
  c.data.code_switch.rate = 0.0  # Probability that a dictionary word is switched; 0 = off (PreAlign: 0.05).
  c.data.code_switch.dictionary = ""  # word_pairs / word_groups JSONL file of translations; needed when rate > 0.
  c.data.code_switch.target_languages = ()  # Languages translations may be in, e.g. ("deu", "swa"); empty = any.
  c.data.code_switch.seed = 0  # Seed of the switch draws; with each document's identity it fixes every switch.

  c.optimizer = ConfigDict()
  c.optimizer.learning_rate = 3e-4  # Peak learning rate.
  c.optimizer.schedule = "cosine"  # After warmup: cosine | linear | constant.
  c.optimizer.warmup_steps = 100  # Linear warmup from 0.
  c.optimizer.end_lr_ratio = 0.1  # Final learning rate as a fraction of the peak.
  c.optimizer.b1 = 0.9  # AdamW beta1.
  c.optimizer.b2 = 0.95  # AdamW beta2.
  c.optimizer.eps = 1e-8  # AdamW epsilon.
  c.optimizer.weight_decay = 0.1  # Decoupled weight decay (matrices only; norms are excluded).
  # Weight decay on the embedding table and the untied LM head too (as most Llama recipes do);
  # false spares them (as GPT-NeoX/OLMo do). Norm scales and biases are never decayed.
  c.optimizer.decay_embeddings = True
  # dtype of AdamW's first moment; "" follows the parameter dtype (bf16 parameters then get
  # bf16 moments). "float32" keeps it in float32 whatever the parameters are stored in.
  c.optimizer.mu_dtype = ""
  # "float32": keep a float32 master copy of bf16 parameters in the optimizer state; updates
  # are applied to the master copy and the parameters are its rounding. "" applies updates
  # to the stored parameters directly.
  c.optimizer.master_dtype = ""
  c.optimizer.clip_norm = 1.0  # Global gradient-norm clipping; 0 disables.
  c.optimizer.grad_accum_steps = 1  # Micro-batches per update (the batch is split, the update is one).
  c.optimizer.z_loss = 0.0  # Weight of the log(Z)^2 auxiliary loss (PaLM uses 1e-4).
  # MoE models only (config.model.num_experts > 0; docs/moe.md): weight α of the load-balance loss
  # N·Σ f_i·P_i averaged over MoE layers (Switch uses 0.01), and of the router z-loss (ST-MoE uses 0.001).
  c.optimizer.moe_balance_weight = 0.01
  c.optimizer.moe_z_loss = 0.001
  c.optimizer.max_consecutive_skips = 5  # Stop after this many non-finite updates in a row.

  c.train = ConfigDict()
  c.train.num_steps = 1000  # Training length in optimizer steps ...
  c.train.num_tokens = 0  # ... or in tokens (overrides num_steps when > 0) ...
  c.train.num_examples = 0  # ... or in packed rows (overrides num_steps when > 0).
  c.train.log_every_steps = 10  # metrics.jsonl / TensorBoard / progress line period.
  c.train.eval_every_steps = 0  # Held-out evaluation period; 0 means start and end only.
  c.train.stop_after_steps = 0  # Save and exit after this step, as on preemption (time-sliced queues); 0: off.
  c.train.profile_start_step = 10  # First step of the jax.profiler trace (after compile and warm-up).
  c.train.profile_steps = 0  # Steps to trace into WORKDIR/profile; 0: no trace.

  c.evaluation = ConfigDict()  # The eval harness during training (polyglot-jax eval; eval/harness.py).
  c.evaluation.tasks = ()  # "name=path" entries, e.g. ("xcopa=data/xcopa", "mgsm=data/mgsm"); empty: off.
  c.evaluation.every_steps = 0  # Period in steps; 0: at the end of training only. Results: WORKDIR/evaluation/.
  c.evaluation.shots = 0  # Multiple-choice and translation shots.
  c.evaluation.mgsm_shots = 0  # MGSM chain-of-thought exemplars, read from evaluation.exemplars.
  c.evaluation.exemplars = ""
  c.evaluation.limit = 0  # Items per language (0: all).
  c.evaluation.batch_size = 16
  c.evaluation.max_new_tokens = 128

  c.checkpoint = ConfigDict()
  c.checkpoint.every_steps = 500  # Save period (also saved at the end and on SIGTERM).
  c.checkpoint.max_to_keep = 3  # Keep the newest K checkpoints; the keep policy alone deletes.
  c.checkpoint.async_save = True  # Write checkpoints in the background while training goes on.

  c.clean = ConfigDict()  # polyglot-jax data clean (data/clean/).
  c.clean.min_words = 5  # Fewer words → rejected (unsegmented scripts: letters / 2).
  c.clean.max_char_repetition = 0.3  # Share of repeated character 10-grams.
  c.clean.max_word_repetition = 0.3  # Share of repeated word 5-grams.
  c.clean.max_special_ratio = 0.3  # Share of characters that are not letters, digits or spaces.
  c.clean.lid_threshold = 0.5  # Language ID must agree with the label at least this confidently.
  c.clean.near_dup_threshold = 0.8  # MinHash Jaccard at or above which a document is a near duplicate.
  c.clean.mask_pii = True  # Replace emails, phone numbers and IPv4 addresses with <EMAIL>/<PHONE>/<IP>.
  c.clean.per_language = ()  # Threshold overrides: (("zho", "min_words", 2), ("yor", "lid_threshold", 0.2)).

  c.metrics = ConfigDict()
  c.metrics.peak_flops_per_device = 0.0  # For MFU; 0 means look up (TPU/GPU) or measure (CPU).

  # Each objective's own section, config.<objective name>, defined and commented next to the
  # objective (objectives/*.py); present whether or not that objective is selected.
  from polyglot_jax.objectives import config_sections
  for name, section in config_sections().items():
    c[name] = section
  return c


# ---------------------------------------------------------------------------
# Loading and overrides
# ---------------------------------------------------------------------------


def load_config_file(path: str) -> ConfigDict:
  """Imports ``path`` and returns its ``get_config()``, locked; a ``.json`` file is a resolved config.

  The JSON form is what every workdir keeps (``WORKDIR/config.json``, also
  written by ``polyglot-jax convert``), so a run can start from another
  run's exact settings: ``--config OTHER_WORKDIR/config.json``.
  """
  if not os.path.isfile(path):
    raise ConfigError(f"config file '{path}' does not exist; pass --config configs/<name>.py")
  if path.endswith(".json"):
    try:
      with open(path) as f:
        values = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ConfigError(f"config file '{path}' is not readable JSON: {e}") from None
    return config_from_dict(values)
  spec = importlib.util.spec_from_file_location(f"polyglot_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # A broken config file: say which and why, in one line.
    raise ConfigError(f"config file '{path}' failed to import: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file '{path}' has no get_config() function")
  config = module.get_config()
  if not isinstance(config, ConfigDict):
    raise ConfigError(f"config file '{path}': get_config() must return an ml_collections.ConfigDict")
  config.lock()
  return config


def _all_keys(config: ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for k, v in config.items():
    keys.append(prefix + k)
    if isinstance(v, ConfigDict):
      keys.extend(_all_keys(v, prefix + k + "."))
  return keys


def _unknown_key(config: ConfigDict, key: str) -> ConfigError:
  close = difflib.get_close_matches(key, _all_keys(config), n=1)
  hint = f"; did you mean '{close[0]}'?" if close else ""
  return ConfigError(f"unknown config key '{key}'{hint}")


def parse_value(key: str, text: str, current: Any) -> Any:
  """Parses an override string to the type of the field it replaces."""
  if isinstance(current, bool):
    low = text.lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise ConfigError(f"config key '{key}' is a bool; got '{text}' (use true or false)")
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      raise ConfigError(f"config key '{key}' is an int; got '{text}'") from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise ConfigError(f"config key '{key}' is a float; got '{text}'") from None
  if isinstance(current, str):
    return text
  if isinstance(current, (tuple, list)):
    stripped = text.strip()
    if stripped.startswith(("(", "[")):
      try:
        value = ast.literal_eval(stripped)
      except (ValueError, SyntaxError):
        raise ConfigError(f"config key '{key}' is a sequence; could not parse '{text}'") from None
      return _tuples(value)
    return tuple(part for part in stripped.split(",") if part) if stripped else ()
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def set_key(config: ConfigDict, key: str, value: Any, *, from_string: bool) -> None:
  """Sets a dotted key of a locked config; unknown keys and wrong types are ConfigErrors."""
  parts = key.split(".")
  node = config
  for i, part in enumerate(parts[:-1]):
    if part not in node or not isinstance(node[part], ConfigDict):
      raise _unknown_key(config, key)
    node = node[part]
  leaf = parts[-1]
  if leaf not in node:
    raise _unknown_key(config, key)
  current = node[leaf]
  if isinstance(current, ConfigDict):
    raise ConfigError(f"config key '{key}' is a section; set one of its fields, e.g. '{key}.{next(iter(current.keys()), 'x')}'")
  if from_string:
    value = parse_value(key, value, current)
  elif isinstance(current, tuple) and isinstance(value, list):
    value = _tuples(value)
  try:
    node[leaf] = value
  except TypeError as e:
    raise ConfigError(f"config key '{key}' expects {type(current).__name__}, got {value!r}") from e


def _tuples(value):
  """Lists (from JSON) → tuples, nested too, as the config's tuple fields hold them."""
  return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def apply_overrides(config: ConfigDict, overrides: Iterable[str]) -> ConfigDict:
  """Applies ``a.b=v`` strings (from ``--config.a.b=v``) to a locked config."""
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"config override '{item}' must look like --config.key=value")
    key, value = item.split("=", 1)
    set_key(config, key, value, from_string=True)
  return config


def load_config(path: str, overrides: Sequence[str] = ()) -> ConfigDict:
  config = load_config_file(path)
  apply_overrides(config, overrides)
  validate(config)
  return config


def validate(config: ConfigDict) -> None:
  """Checks that cut across fields; each failure names the keys involved."""
  d, m = config.data, config.model
  if d.global_batch_size % config.optimizer.grad_accum_steps:
    raise ConfigError(
        f"config.data.global_batch_size={d.global_batch_size} is not divisible by "
        f"config.optimizer.grad_accum_steps={config.optimizer.grad_accum_steps}")
  if config.optimizer.schedule not in ("cosine", "linear", "constant"):
    raise ConfigError(f"config.optimizer.schedule='{config.optimizer.schedule}'; use cosine, linear or constant")
  if m.d_model % m.num_heads and m.head_dim <= 0:
    raise ConfigError(f"config.model.d_model={m.d_model} is not divisible by num_heads={m.num_heads}; set model.head_dim")
  if d.mixture.method not in ("proportional", "temperature", "unimax", "weights"):
    raise ConfigError(f"config.data.mixture.method='{d.mixture.method}'; use proportional, temperature, unimax or weights")
  if d.source not in ("jsonl", "demo"):
    raise ConfigError(f"config.data.source='{d.source}'; use jsonl or demo")
  if d.backend not in ("packed", "grain", "seqio"):
    raise ConfigError(f"config.data.backend='{d.backend}'; use packed, grain or seqio")
  if d.packing not in ("greedy", "best_fit"):
    raise ConfigError(f"config.data.packing='{d.packing}'; use best_fit or greedy")
  if d.open_rows < 1:
    raise ConfigError(f"config.data.open_rows={d.open_rows}; keep at least 1 row open")
  if d.on_host_change not in ("error", "restart"):
    raise ConfigError(f"config.data.on_host_change='{d.on_host_change}'; use error or restart")
  cs = d.code_switch
  if not 0.0 <= cs.rate <= 1.0:
    raise ConfigError(f"config.data.code_switch.rate={cs.rate}; use a probability in [0, 1] (0 turns it off)")
  if cs.rate > 0 and not cs.dictionary:
    raise ConfigError(f"config.data.code_switch.rate={cs.rate} needs config.data.code_switch.dictionary (a "
                      "word_pairs or word_groups JSONL file); set it, or set the rate to 0")


def to_json(config: ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def resolve_steps(config: ConfigDict) -> int:
  """Training length in steps from num_steps / num_tokens / num_examples."""
  t, d = config.train, config.data
  if t.num_tokens > 0:
    per_step = d.global_batch_size * d.seq_len
    return max(1, -(-t.num_tokens // per_step))
  if t.num_examples > 0:
    return max(1, -(-t.num_examples // d.global_batch_size))
  if t.num_steps <= 0:
    raise ConfigError("config.train: set num_steps, num_tokens or num_examples to a positive number")
  return t.num_steps


def config_from_dict(values: dict) -> ConfigDict:
  """Rebuilds a locked config from its JSON form (workdir/config.json).

  A section of an objective that is not registered in this process (one a
  script or test registered where the config was written) is left out with
  a warning, unless it is the selected objective's, which is an error.
  """
  import logging
  base = default_config()
  base.lock()
  values = dict(values)
  for key in [k for k, v in values.items() if isinstance(v, dict) and k not in base]:
    if key == values.get("objective", base.objective):
      raise ConfigError(f"config.objective='{key}' is not a registered objective here; import the module that "
                        "registers it before loading this config")
    logging.warning("config section '%s' belongs to an objective not registered here; left out", key)
    del values[key]
  _update(base, values, "")
  return base


def _update(node: ConfigDict, values: dict, prefix: str) -> None:
  for k, v in values.items():
    if isinstance(v, dict) and k in node and isinstance(node[k], ConfigDict):
      _update(node[k], v, prefix + k + ".")
    else:
      if k == "logical_axis_rules":
        v = tuple((name, tuple(t) if isinstance(t, list) else t) for name, t in v)
        # A config saved before a logical name existed keeps working: the name gets its default rule.
        named = {name for name, _ in v}
        v = v + tuple(rule for rule in DEFAULT_RULES if rule[0] not in named)
      set_key(node, k, v, from_string=False)


__all__ = ["ConfigError", "default_config", "load_config", "apply_overrides", "resolve_steps",
           "set_key", "to_json", "config_from_dict", "ml_collections"]
