"""Plain-text training logs: nanoGPT, Megatron-LM/DeepSpeed, fairseq, HF stdout, torchtune, llm.c, torchtitan,
MMEngine/mmcv, timm, LitGPT, OpenNMT-py, Keras, fastai, detectron2, hand-written loops and free-form `key: value` lines.

How a file is read, fast and without a Python loop per line:
- the bytes become an Arrow array of physical lines (zero-copy) and each line a *skeleton*: the line with each run
  of digits replaced by one mark (numpy). Log lines repeat a few shapes, so a million lines have a few skeletons;
- one line of each skeleton is parsed in Python into a *plan*: which number of the line is the step, which is which
  metric, whether it is a warning/overflow event. The numbers of every line of that shape are then located at once
  from the positions of their digit runs (numpy) and cast to float64 in one Arrow call;
- a line that does not fit its group exactly (rare) is parsed on its own by the same Python parser, and so are
  groups of a few lines. A property test checks that both paths read the same.

Only lines that say what they are produce points: a step anchor at the start of the line (`iter 100:`, `step 10 |`,
` iteration 31219/ 115311 |`, `Epoch 3 Step 120:`, `step=10,`) followed by `key: value` fields, or a well-known shape
(`[Eval] ...`, Megatron's `validation loss at iteration N | ...`, fairseq's JSON log lines, build-nanogpt's
`0 train 10.955`). Prose numbers are never read; in markdown (and any file with ``` fences) only code blocks are.
Hand-written loops: the tutorials' `Epoch [E/N], Step [i/L], Loss: X` (step (E - 1) * L + i), and a line per epoch
(`Epoch 3: train loss X, val loss Y`, `Epoch 3/10 - loss: X - val_loss: Y`), whose epoch is the step only in a file
with no step lines (beside them it is a summary, noted and not read). So are Keras' `Epoch E/N` header with its
progress bar on the next line (verbose=1 redraws it with backspaces and `\r` on one physical line: the text after the
last `\r` counts) and fastai's console table, whose rows of bare numbers take their names from the header above.

The shapes of other trainers are written from their own format strings (cited where each is defined), and their
steps follow each trainer's numbering: torchtune's DiskLogger `Step N | loss:X lr:Y ` (tensor reprs read); llm.c's
main.log `s:N trl:X lr:Y norm:Z` / `s:N tel:X` and its stdout `step N+1/T | loss X (...z)| ...`, which prints
step + 1 where main.log writes step (read as main.log numbers it, so both files agree); torchtitan's
`step: N  loss: X  grad_norm: ...  tps: 1,234  ...` with or without ANSI colours (thousands groups joined);
MMEngine's `Epoch(train) [E][i/L]  lr: ...` (step (E - 1) * L + i, computed only when L is on the line) and
`Iter(train) [N/T]` (the global iteration), and mmcv's `Epoch [E][i/L]\tlr: ..., loss: ...`. A validation summary
of MMEngine takes the last training step before it; its progress lines and the test pass give no points. Keys
with numbers of their own (`accuracy/top1`) keep them: a group of lines of one shape uses its first line's key
numbers, and a line whose key numbers differ is read on its own.

Lines that carry no step of their own (events, `[Eval] loss: ...`, build-nanogpt's `validation loss: ...`) take the
step of the nearest step line *after* them: trainers print a step's summary line once the step is done, so what is
printed while step N runs (an fp16 overflow, a NaN clamp, the eval at the top of step N) comes before step N's line.
The reference trainer, Megatron, DeepSpeed, fairseq and build-nanogpt all behave so (checked on their logs). A line
after the last step line takes that last step, except llm.c's `val loss X` and a HellaSwag line, which take that
step + 1 (llm.c evaluates once more after its last step). The exception is a bare `Loss: X` line (DeepSpeed's
examples), a summary printed after its step line. A point that two files of a run both log is read once when the
values agree to the precision the coarser file printed (llm.c's main.log `%.4f` beside its stdout's `%7.6f`).
Only step lines that log a value count: `Step 2: Create Text` in a generated sample does not.

Multi-process runs: a line tagged with the process that wrote it (torchrun's and accelerate's `[default1]:`,
PyTorch's own `[rank1]:`, DeepSpeed's `[Rank 1]`, Slurm's `srun --label` `1: `, Open MPI's `[1,1]<stdout>:`; see
_RANK_LEADS; torchrun's tag inside srun's, `1: [default3]:`, gives a rank per (task, local rank): _SRUN_TORCHRUN)
gives points of that rank, so the ranks of an interleaved log are separate series (Run.series reads the lowest
rank); the tag is one more number of the line's shape, read with the others. A per-rank file (torchrun's --log-dir `attempt_0/1/stdout.log`, DeepSpeed's
`..._rank1.log`) gives its rank to its untagged lines; in a tagged file an untagged point is the lowest tagged
trainer rank's (an excerpt that lost its tag), else rank 0. A pdsh `host: ` prefix is read past and gives no rank.
A line that takes its step from the context takes it from its own rank's step lines where that rank prints any.
Events keep their rank in `data["rank"]`.
"""

from __future__ import annotations

import codecs
import math
import mmap
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from analyzer.errors import InputError
from analyzer.run import Event, Ingested, Note
from analyzer.ingest.paths import relative
from analyzer.ingest.tabular import rank_from_name

FORMAT = "text"

ELASTIC_LOG_NAMES = frozenset({"stdout.log", "stderr.log"})  # a worker's own streams under torchrun's --log-dir
_ATTEMPT = re.compile(r"attempt_[0-9]+")
TEXT_SUFFIXES = frozenset({"", ".log", ".txt", ".out", ".err", ".md", ".markdown", ".stdout", ".stderr"})
MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})
SNIFF_BYTES = 256 * 1024  # a log shows a recognised line within this much (DeepSpeed's config dump is ~20 KB)
BINARY_PROBE_BYTES = 4096  # a NUL byte here means a binary file, not a log
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
CHUNK_BYTES = 32 * 1024 * 1024  # lines are scanned in blocks of about this size, to bound memory
MAX_LINE_CHARS = 1024 * 1024  # longer lines are no log records (a dumped tensor, a blob): skipped, counted
# (a progress bar redrawn with `\r` between two log lines makes one physical line of many KB: that is still read)
MAX_WRAP_LINES = 4  # a Megatron line wrapped by a terminal spans at most this many more physical lines
MAX_WARNING_EVENTS = 1000  # per file: a warning repeated every step says no more after the first thousand
EVENT_TEXT_CHARS = 500  # an event keeps this much of its line
SMALL_GROUP = 4  # groups of this many lines or fewer are parsed line by line (cheaper than an Arrow call)
DEDUPE_RTOL = 1e-6  # the same (metric, step) in two files with values this close is one point, not a restart
MAX_PRINTED_DECIMALS = 9  # ... or values equal to the precision the coarser file printed (llm.c: %.4f and %.6f)
PRINTED_RTOL = 1e-11  # a float is a short decimal when scaling it by 10**d leaves a whole number within this
LATIN1_MAX_BAD_CHARS = 100_000  # beyond this many invalid UTF-8 sequences a file is garbage, decoded with U+FFFD
PLAN_CACHE_SIZE = 50_000
PLAN_CACHE_MAX_CHARS = 4096  # longer templates (a progress bar redrawn with \r: one line per Keras epoch, of up to
# MBs, each of its own shape) are planned without being kept, so the cache stays small

SLOT = "\x01"  # stands for one number in a line's template
NUM = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"  # ASCII digits only, as numpy sees them
_NUM = re.compile(NUM)

# Renames of normalised keys (lower case, runs of spaces/dashes as "_"), for names that canonical_metric would not
# map or would map wrongly. Megatron keys are compared without any whitespace, so a line wrapped mid-word still maps.
KEY_RENAMES = {
    "elapsed_time_per_iteration_(ms)": "step_time_ms", "elapsed_time_per_iteration_(s)": "step_time_s",
    "samples_per_second": "samples_per_s", "samples_per_sec": "samples_per_s", "currsamplespersec": "samples_per_s",
    "runningavgsamplespersec": "samples_per_s_running_avg",
    "number_of_skipped_iterations": "skipped_iterations", "number_of_nan_iterations": "nan_iterations",
    "params_norm": "param_norm", "tflops": "tflops", "tflops_per_gpu": "tflops",
    "consumed_samples": "consumed_samples", "consumed_tokens": "consumed_tokens",
    "global_batch_size": "global_batch_size", "num_zeros": "num_zeros",
}
MEGATRON_RENAMES = {"lmloss": "loss"}  # Megatron's `lm loss` is the training loss (keys compared without spaces)
MEGATRON_VALID_RENAMES = {"lmlossvalue": "loss", "lmlossppl": "ppl"}
# fairseq logs words (= target tokens) and updates per second; its loss is in base 2 (recorded as hparam loss_base).
FAIRSEQ_RENAMES = {"wps": "tokens_per_s", "ups": "steps_per_s", "valid_wps": "eval_tokens_per_s"}
FAIRSEQ_IGNORED = {"update", "wall", "train_wall", "gb_free", "num_updates", "valid_num_updates", "valid_wall"}
HF_IGNORED = {"total_flos", "current_flos"}  # its step and global_step are COUNTER_KEYS
COUNTER_KEYS = {"step", "global_step", "iter", "iteration", "micro_step", "v_num"}  # v_num: Lightning's version
DICT_STEP_KEYS = ("num_updates", "valid_num_updates", "global_step", "step", "iteration", "iter")
STEP_TIME_BASES = {"step_time", "dt", "time", "iter_time", "time_per_step", "batch_time", "time_per_iteration"}
UNIT_SUFFIXES = {"ms": "_ms", "s": "_s", "gb": "_gb", "mb": "_mb", "%": ""}
_SQUARED = re.compile(r"\s*(?:\u00ac\u2264|\u00c2\u00b2|\u00e2\u00b2|\u00b2)")  # ² and its mojibake

# --- line shapes, written over templates (numbers replaced by SLOT) -------------------------------------------------

# What may stand before a step anchor: whitespace and markdown quote marks, [bracketed] tags (not [Eval]),
# timestamps, log levels, `module:function:line`, `file.py:line`, `rank N`, ANSI colours, DeepSpeed's
# `epoch=0/micro_step=10/`, Python logging's `name - LEVEL - ` (torchtitan's `root - INFO - `, MMEngine's
# `mmengine - INFO - `). Possessive, so a line that is not a log record fails fast.
_PREFIX_PARTS = (
    r"(?:[ \t>#*+|:\-\ufeff]"
    r"|\[(?!(?i:eval|evaluation|val|valid|validation{tags})\])[^\]\n]{{0,100}}\]:?"
    r"|\x1b\[[\x01;]*m"
    r"|<std(?:out|err)>:"
    r"|\x01(?:[-/.:,T ]?\x01)*Z?"
    r"|(?:INFO|DEBUG|WARNING|WARN|ERROR|CRITICAL|NOTICE|TRACE)\b(?::[\w.<>]+)*:?"
    r"|[\w.<>]+:[\w.<>]+:\x01"
    r"|[\w.]+\.py:\x01"
    r"|(?i:rank)\s*\x01:?"
    r"|(?:epoch|micro_step)=\x01/"
    r"|[\w.]+(?:\x1b\[[\x01;]*m)*\s+-\s+(?=(?:\x1b\[[\x01;]*m)*(?:INFO|DEBUG|WARNING|WARN|ERROR|CRITICAL)\b)"
    r")*+"
)
# pdsh (DeepSpeed's multi-node launcher) writes each remote line as `%S: %s`, host then line (chaos/pdsh,
# src/pdsh/dsh.c: out("%S: %s", a->host, buf)): `worker-0: `, `localhost: `. A host name here needs a digit, `-` or
# `.` (or is localhost), so that a key such as `Loss: ` is never taken for one. Once, at the start of the line.
_HOST = r"(?:localhost|[A-Za-z](?=[\w.\-\x01]*?[.\-\x01])[\w.\-\x01]*+): "  # linear: no backtracking in a long word
_PREFIX = rf"(?:{_HOST})?+" + _PREFIX_PARTS.format(tags="")
_PREFIX_UNTAGGED = rf"(?:{_HOST})?+" + _PREFIX_PARTS.format(tags="|warn|warning|error|fatal|critical")  # stops at
# [Warning] / [Error]
_HEAD = re.compile(_PREFIX)

# The process that wrote a line (a rank), written over templates:
# - torch.distributed.elastic (torchrun / accelerate launch with --tee or --redirects) starts each line it copies to
#   the console with `[{role}{local_rank}]:` (TailLog, torch/distributed/elastic/multiprocessing/tail_log.py:
#   header = f"[{self._name}{local_rank}]:"; role "default" under torchrun and accelerate), or with the template in
#   TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE (`[${rank}]:` in its docs, local_elastic_agent.py). A local rank: the global
#   one only on a single node. --local-ranks-filter keeps some ranks off the console, so a log may hold one rank;
# - PyTorch itself, once its process group is up: c10 log lines `[rank0]:[W1030 14:32:58.123456789 file.cpp:12] ...`
#   (c10/util/Logging.cpp, MessageLogger: stream_ << "[rank" << GLOBAL_RANK << "]:") and uncaught tracebacks
#   `[rank0]: Traceback ...` (torch/distributed/distributed_c10d.py, _distributed_excepthook: f"[rank{rank}]: {s}");
# - DeepSpeed's log_dist (deepspeed/utils/logging.py): "[Rank {}] {}".format(my_rank, message), after the logger's
#   own prefix; `[Rank -1]` before torch.distributed is set up (no rank).
# - Slurm's `srun --label` (src/api/step_io.c, _build_label): "%*d: ", the task id (the global rank) padded to the
#   width of the largest one (a heterogeneous job's "P%u %*d: " is not read);
# - Open MPI's `mpirun --tag-output`: `[jobid,rank]<stdout>:` (or `<stderr>:`), and horovodrun's `[rank]<stdout>:`.
# torchrun under `srun --label` (one torchrun per node) tags each line twice: `1: [default3]:`, srun's task (the node)
# outside torchrun's local rank. The local ranks of every node are 0..n-1, so the pair names the process: its rank
# is task * (the largest local rank + 1) + local rank (the global rank when the tasks are numbered as the nodes
# rank), or, where PyTorch's own `[rankN]:` tags a line of that task, N - that line's local rank + local rank. A
# line with srun's label alone in such a file is a launcher agent's, of no trainer rank.
# Otherwise the first tag of a line wins (the launcher's header is outermost; its metric lines carry no other). A
# pdsh host gives no rank: one host runs several ranks (DeepSpeed's launch.py starts them all behind the one
# `host: `) and its name is no number of any of them.
_SRUN_TORCHRUN = re.compile(rf"[ \t>]*(?P<rank>\x01): (?:{_HOST})?\[(?:[A-Za-z_][\w\-]*?)?(?P<local>\x01)\]:")
_RANK_LEADS = (
    re.compile(rf"[ \t>]*(?:{_HOST})?\[(?:[A-Za-z_][\w\-]*?)?(?P<rank>\x01)\]:"),
    re.compile(r"[ \t>]*(?P<rank>\x01): "),
    re.compile(r"[ \t>]*\[(?:\x01,)?(?P<rank>\x01)\]<std(?:out|err)>:"),
)
_LAUNCHER_TAGS = (rf"(?:{_HOST})?(?:\x01: )?(?:\[(?:\x01,)?\x01\]<std(?:out|err)>: ?)?"
                  r"(?:\[(?:[A-Za-z_][\w\-]*?)?\x01\]:)*")  # as many as a line has
_RANK_TAG = re.compile(r"\[(?i:rank)\s?(?P<rank>\x01)\]")
MAX_RANK = 1 << 24  # a larger "rank" is no process number
_ANCHOR = re.compile(
    _PREFIX
    + r"(?:(?i:epoch)\s*[:=]?\s*(?P<epoch>\x01)(?:\s*/\s*\x01)?\s*[,|:]?\s*)?"
    r"(?P<kw>(?i:global[_ ]step|iteration|iter|step))(?:\s*[:=#]\s*|\s+)(?P<step>\x01)"
    r"(?:\s*/\s*(?P<total>\x01))?"
    r"(?P<rest>(?:[\s:|,;)\]].*)?)\Z", re.S)
_EVAL = re.compile(
    _PREFIX
    + r"(?P<tag>\[(?i:eval|evaluation|validation|valid|val)\]:?|(?i:eval|evaluation|validation)\b:?)\s*"
    r"(?:(?i:step|iter|iteration)\s*[:=#]?\s*(?P<step>\x01)\s*[:|,]?)?(?P<rest>.*)\Z", re.S)
_MEGATRON_VALID = re.compile(
    _PREFIX + r"(?i:valid(?:ation)?) loss at (?:iteration\s*(?P<step>\x01)|the end of training[^|]*?)\s*\|"
    r"(?P<rest>.*)\Z", re.S)
_LOGTXT = re.compile(r"(?P<step>\x01) (?P<kind>train|val|hella) (?P<value>\x01)\s*\Z")  # build-nanogpt's log.txt
_FAIRSEQ = re.compile(r".*?\|\s*(?P<tag>train_inner|valid|train)\s*\|\s*\{(?P<rest>.*)\}\s*\Z", re.S)
_DICT = re.compile(_PREFIX + r"\{(?P<rest>.*)\}\s*\Z", re.S)  # HF Trainer prints its log dicts to stdout
# `[Rank 0] Loss: 10.8719` (DeepSpeed's examples). Not `train_loss = 3.53`: HF's end-of-training average.
_BARE_LOSS = re.compile(_PREFIX + r"(?P<key>(?i:loss))\s*[:=]\s*(?P<value>\x01)\s*\Z")
# build-nanogpt's `HellaSwag accuracy: 2487/10042=0.2477`, llm.c's `HellaSwag: 2505/10042 = 0.249452`
_HELLASWAG = re.compile(_PREFIX + r"(?i:hellaswag(?: accuracy)?):?\s*\x01\s*/\s*\x01\s*=\s*(?P<value>\x01)\s*\Z")
_FIELD_SPANS = re.compile(r"[^|,;]+")
_FIELD = re.compile(
    r"\s*[\"']?(?P<key>[^\W\d][^:=\"'\x01\n]*?)[\"']?\s*(?:[:=]\s*|\s+)[\"']?\[?"
    r"(?:(?P<slot>\x01)|(?P<const>[-+]?(?i:nan|inf(?:inity)?)))"
    r"\]?[\"']?(?P<unit>ms|s|%|GB|MB)?\s*", re.S)

# --- the line shapes of other trainers, each written from the trainer's own format string ----------------------------

_ANSI = r"(?:\x1b\[[\x01;]*m)"  # a colour code (its numbers are slots in a template)
_VALUE = r"(?:\x01|[-+]?(?i:nan|inf))"  # a number, or a non-finite value as Python or C prints it


def _value(name: str) -> str:
    return rf"(?P<{name}>{_VALUE})"


# torchtune's DiskLogger and StdoutLogger (pytorch/torchtune, torchtune/training/metric_logging.py, log_dict):
# f"Step {step} | " then f"{name}:{data} " for each metric; `data` as Python prints it, a float or a tensor's repr
# (`grad_norm:tensor(0.8125, device='cuda:0')`). log(): f"Step {step} | {name}:{data}". On a terminal log the
# StdoutLogger's line may follow the recipe's tqdm bar (`1|3|Loss: 1.17:  60%|###   | 3/5 [00:05<00:03,  1.6s/it]`).
_TUNE_VALUE = r"(?:tensor\([^()\n]*\)|[^\s(]+)"
_TORCHTUNE = re.compile(r"(?:.*?(?:it/s|s/it)\])?" + _PREFIX + r"Step (?P<step>\x01) \| (?P<rest>[^\s:|]+:" + _TUNE_VALUE
                        + r"(?: [^\s:|]+:" + _TUNE_VALUE + r")*) ?\s*\Z")
_TUNE_FIELD = re.compile(r"(?P<key>[^\s:|]+):(?:tensor\((?P<tensor>[^,()\n]*)[^()\n]*\)|(?P<value>[^\s(]+))")
# llm.c's main.log (karpathy/llm.c, llmc/logger.h): "s:%d trl:%.4f lr:%.6f norm:%.2f", "s:%d tel:%.4f" and
# "s:%d eval:%.4f" (HellaSwag); its train_gpt2.py writes "s:%d trl:%f" / "s:%d tel:%f", and forks add fields
# (modded-nanogpt: "s:%d trl:%f train_time:%.0fms step_avg:%.2fms").
_LLMC_LOG = re.compile(r"[ \t]*s:(?P<step>\x01)(?P<rest>(?: [A-Za-z_]\w*:" + _VALUE + r"(?:ms)?)+)\s*\Z")
_LLMC_FIELD = re.compile(r" (?P<key>[A-Za-z_]\w*):(?P<value>" + _VALUE + r")(?P<unit>ms)?")
# llm.c's stdout. These print step + 1 where main.log writes step (the loss of the step that starts from the
# weights after `step` updates, as the val loss and model_<step>.bin are numbered): read as main.log numbers it.
_LLMC_Z = r"\s*\(" + _VALUE + r"z\)"  # the z-score of the loss / norm against its recent values
_LLMC_STDOUT = (
    # train_gpt2.cu: "step %4d/%d | loss %7.6f (%+.2fz)| norm %6.4f (%+.2fz)| lr %.2e | %.2f ms |
    # %.1f%% bf16 MFU | %.0f tok/s"
    re.compile(_PREFIX + r"step\s*(?P<step>\x01)/\x01 \| loss " + _value("loss") + _LLMC_Z + r"\| norm "
               + _value("grad_norm") + _LLMC_Z + r"\| lr " + _value("lr") + r" \| " + _value("step_time_ms")
               + r" ms \| " + _value("mfu") + r"% bf\x01 MFU \| " + _value("tokens_per_s") + r" tok/s\s*\Z"),
    # train_gpt2.py: f"step {step+1:4d}/{args.num_iterations} | train loss {lossf:.6f} | norm {norm:.4f} |
    # lr {lr:.2e} | ({(t1-t0)*1000:.2f} ms | {tokens_per_second:.0f} tok/s)"
    re.compile(_PREFIX + r"step\s*(?P<step>\x01)/\x01 \| train loss " + _value("loss") + r" \| norm "
               + _value("grad_norm") + r" \| lr " + _value("lr") + r" \| \(" + _value("step_time_ms") + r" ms \| "
               + _value("tokens_per_s") + r" tok/s\)\s*\Z"),
    # earlier train_gpt2.cu: "step %4d/%d: train loss %f (%f ms, %d tok/s)"
    re.compile(_PREFIX + r"step\s*(?P<step>\x01)/\x01: train loss " + _value("loss") + r" \("
               + _value("step_time_ms") + r" ms, " + _value("tokens_per_s") + r" tok/s\)\s*\Z"),
)
# train_gpt2.c (CPU) prints its loop's own step: "step %d: train loss %f (took %f ms)"
_LLMC_CPU = re.compile(_PREFIX + r"step (?P<step>\x01): train loss " + _value("loss") + r" \(took "
                       + _value("step_time_ms") + r" ms\)\s*\Z")
# "val loss %f", printed at the top of the step it evaluates, before that step's line
_LLMC_VAL = re.compile(_PREFIX + r"val loss " + _value("eval_loss") + r"\s*\Z")
# torchtitan (pytorch/torchtitan, torchtitan/components/metrics.py, MetricsProcessor.log): f"{color.red}step:
# {step:2}  {color.green}loss: {loss:7.4f}  {color.orange}grad_norm: {grad_norm:7.4f}  {color.turquoise}memory:
# {gib:5.2f}GiB({pct:.2f}%)  {color.blue}tps: {round(tps):,}  {color.cyan}tflops: {tflops:,.2f}  {color.magenta}mfu:
# {mfu:.2f}%{color.reset}"; log_validation: "validate step: ..." with loss, memory and tps. Colours are ANSI codes
# (torchtitan/tools/utils.py, Color) or nothing (NoColor); `,` groups thousands.
_TITAN_HEAD = re.compile(_PREFIX + r"(?P<validate>validate )?step:\s*(?P<step>\x01)(?=\s|\x1b|\Z)")
_TITAN_SEP = re.compile(r"(?:\s|" + _ANSI + r")*")
_TITAN_FIELD = re.compile(r"(?P<key>[A-Za-z_][A-Za-z_ ]*?):\s+(?:(?P<num>\x01(?:,\x01)*)|(?P<const>[-+]?(?i:nan|inf))"
                          r"|N/A)(?P<unit>GiB|%|s)?(?:\(\x01%\))?(?=\s|\x1b|\Z)")
# MMEngine (open-mmlab/mmengine, mmengine/runner/log_processor.py, get_log_after_iter / get_log_after_epoch):
# f"Epoch({mode}){cur_epoch_str}[{cur_iter}/{dataloader_len}]  " (cur_iter counts within the epoch) or
# f"Iter({mode}) [{cur_iter}/{max_iters}]  " (the global iteration), then f"lr: {lr:.4e}", f"eta: {timedelta}",
# "time: ", "data_time: ", "memory: " (MB) and f"{name}: {val:.4f}" items, two spaces apart. mmcv's TextLoggerHook
# (open-mmlab/mmcv, mmcv/runner/hooks/logger/text.py): f"Epoch [{epoch}][{iter}/{len(data_loader)}]\t" or
# f"Iter [{iter}/{max_iters}]\t", then the items joined by ", ".
_MM_HEAD = re.compile(_PREFIX + r"(?P<kind>Epoch|Iter)(?:\((?P<mode>train|val|test)\))?\s*"
                      r"(?:\[\s*(?P<epoch>\x01)\s*\])?\[\s*(?P<iter>\x01)\s*(?:/\s*(?P<len>\x01)\s*)?\]"
                      r"(?P<rest>.*)\Z", re.S)
_MM_FIELD = re.compile(r"(?<![^\s,])(?P<key>[A-Za-z_][\w./\-\x01]*):\s+(?:(?P<time>(?:\x01 days?, )?\x01(?::\x01)+)"
                       r"|(?P<num>\x01)(?![ \t]+\x01)|(?P<const>[-+]?(?i:nan|inf))|[^\s,]+)(?=[\s,]|\Z)")
# (a number followed by more numbers is a list, as mmdet's `bbox_mAP_copypaste: 0.376 0.581 ...`: not read)
MM_SKIPPED = {"eta", "iter", "epoch"}  # eta is a duration; iteration and epoch are in the head
MM_EVAL_SKIPPED = {"eta", "time", "data_time", "memory", "lr", "base_lr"}  # the validation pass's own timing

# timm's train.py (huggingface/pytorch-image-models, train_one_epoch): _logger.info(f'Train: {epoch}
# [{update_idx:>4d}/{updates_per_epoch} ({pct:>3.0f}%)]  ' f'Loss: {losses_m.val:#.3g} ({losses_m.avg:#.3g})  '
# f'Time: {t:.3f}s, {rate:>7.2f}/s  ({t_avg:.3f}s, {rate_avg:>7.2f}/s)  ' f'LR: {lr:.3e}  ' f'Data: ...'), with
# `Updates: {total_updates}  ` after the progress in recent versions and `CE:`/`KD:` after the loss when distilling.
# Epochs count from 0: the step is epoch * updates_per_epoch + update_idx (the scheduler's num_updates). The value
# before each parenthesis is this update's; the one inside, the running mean of the epoch, is not read. The
# `Test: [ i/L]` lines are the validation pass's running means: summary.csv holds their result.
_TIMM_HEAD = re.compile(_PREFIX + r"Train:\s*(?P<epoch>\x01)\s*\[\s*(?P<iter>\x01)\s*/\s*(?P<len>\x01)\s*"
                        r"\(\s*\x01\s*%\)\]\s*(?:Updates:\s*\x01\s*)?(?P<rest>Loss:.*)\Z", re.S)
_TIMM_FIELD = re.compile(r"(?P<key>[A-Za-z][\w@]*):\s*" + _value("value") + r"s?(?:,\s*\x01/s)?(?:\s*\([^)]*\))?\s*")
TIMM_RENAMES = {"ce": "lm_loss", "kd": "kd_loss", "time": "step_time_s", "data": "data_time_s"}  # CE + KD = loss

# Hand-written loops. The PyTorch tutorials' print(f'Epoch [{epoch+1}/{num_epochs}], Step [{i+1}/{total_step}], Loss:
# {loss.item():.4f}') (yunjey/pytorch-tutorial, widely copied): the step counts batches within an epoch of
# total_step, so the global step is (epoch - 1) * total_step + step.
_EPOCH_BATCH_HEAD = re.compile(
    _PREFIX + r"(?i:epoch)\s*\[\s*(?P<epoch>\x01)\s*/\s*\x01\s*\]\s*[,:|]?\s*(?i:step|iter|iteration|batch)\s*"
    r"\[\s*(?P<iter>\x01)\s*/\s*(?P<len>\x01)\s*\]\s*[,:|]?(?P<rest>.*)\Z", re.S)
# A line per epoch and nothing finer: `Epoch 3: train loss 0.51, val loss 0.62`, `Epoch 3/10 - loss: 0.51 - val_loss:
# 0.62`, `Epoch 3 | Loss train: 0.51`. The epoch is the step, but only in a file with no step lines: beside them an
# epoch line is a summary (Lightning's progress bar ends each epoch with one), and its epoch number no step.
_EPOCH_HEAD = re.compile(_PREFIX + r"(?i:epoch)\s*[:#=]?\s*(?P<epoch>\x01)(?:\s*/\s*\x01)?\s*[:|,\-]?(?P<rest>.*)\Z",
                         re.S)

# Keras' model.fit console output. keras-team/keras, keras/src/callbacks/progbar_logger.py (Keras 3), on_epoch_begin:
# io_utils.print_msg(f"Epoch {epoch + 1}/{self.epochs}") (only when epochs > 1; Keras 2: print('Epoch %d/%d' % (epoch
# + 1, self.epochs))), then the epoch's progress bar (keras/src/utils/progbar.py, Progbar.update):
# - verbose=1: each redraw is "\b" * previous width + "\r" + f"\x1b[1m{current:>n}/{target}\x1b[0m " + green and
#   white "━" bars in colour codes + f" \x1b[1m{eta}\x1b[0m" (the elapsed f"{t:.0f}s" once final) + f" {t:.0f}ms/step"
#   (or s/step, us/step) + f" - {name}: {avg:.4f}" ({avg:.4e} below 1e-3) per metric, and "\n" once final. The
#   dynamic display is on whenever "posix" is in sys.modules, so a redirected log holds the backspaces and carriage
#   returns too: an epoch is one physical line, whose text after its last "\r" is the epoch's result (val_ metrics
#   included). Keras 2 (keras/utils/generic_utils.py) draws `32/32 [==============================] - 1s 10ms/step -
#   loss: 0.6931 - acc: 0.5000` the same way;
# - verbose=2: once per epoch, f"{current}/{target} - {t:.0f}s -" + f" {t:.0f}ms/step" + the metrics (Keras 3);
#   `32/32 - 1s - loss: ... - 53ms/epoch - 2ms/step` in tf.keras 2.x, ` - 1s - loss: ...` in Keras 2.2.
# The epoch (as printed, from 1) is the step, as for the other per-epoch lines (_EPOCH_HEAD); its bar is the first
# finished bar after its header (model.evaluate after fit draws another one, under no header of its own).
_KERAS_EPOCH = re.compile(_PREFIX + r"Epoch (?P<epoch>\x01)/\x01\s*\Z")
_KERAS_BAR = re.compile(
    r"[ \t]*(?:" + _ANSI + r")*[ \t]*(?:(?P<done>\x01)/(?P<total>\x01)(?:" + _ANSI + r")*)?"  # f"{done:>n}/{total}"
    r"(?: \[[=>.]*\]|(?:\s|\u2501|" + _ANSI + r")*)"
    r"(?: - |\s)(?:" + _ANSI + r")*\x01s(?:" + _ANSI + r")*"
    r"(?:(?: - | )(?P<time>\x01)(?P<unit>s|ms|us)/step)?"
    r"(?P<rest>(?: - [A-Za-z_][^:\n]*?: " + _VALUE + r")+)"
    r"(?: - \x01(?:s|ms|us)/epoch - (?P<time2>\x01)(?P<unit2>s|ms|us)/step)?\s*\Z", re.S)
_KERAS_FIELD = re.compile(r" - (?P<key>[A-Za-z_][^:\n]*?): (?P<value>" + _VALUE + r")")
KERAS_RENAMES = {"learning_rate": "lr"}

# detectron2's CommonMetricPrinter (facebookresearch/detectron2, detectron2/utils/events.py, write()): " {eta}iter:
# {iter}  {losses}  {non_losses}  {avg_time}{last_time}{avg_data_time}{last_data_time} lr: {lr}  {memory}" with
# eta=f"eta: {str(timedelta)}  " ("0:10:33", "1 day, 2:03:04"), each loss and "[metric]" value "{}: {:.4g}" joined by
# two spaces, "time: {:.4f}  " (the mean iteration time since the start), "last_time: {:.4f}  " (the last
# iteration's), "data_time: {:.4f}  " (mean of the last 20), "last_data_time: {:.4f}  ", lr "{:.5g}" or "N/A", and
# "max_mem: {:.0f}M" (CUDA max allocated, MiB) on a GPU; older versions print " {eta}iter: {iter}  {losses}
# {time}{data_time}lr: {lr}  {memory}" with "{:.3f}" losses. `iter` is storage.iter, the iteration just done (from 0),
# as its metrics.json numbers it. The logger (detectron2/utils/logger.py, setup_logger) starts each console line with
# colored("[%(asctime)s %(name)s]: ") (`[11/22 07:50:00 d2.utils.events]: `) and each log.txt line with
# "[%(asctime)s] %(name)s %(levelname)s: " (`[11/22 07:50:00] d2.utils.events INFO: `).
_D2_HEAD = re.compile(_PREFIX + r"(?:[\w.\x01]+ (?:INFO|WARNING|DEBUG):\s+)?"
                      r"(?:eta: (?:\x01 days?, )?\x01(?::\x01)+\s+)?"
                      r"iter: (?P<step>\x01)(?P<rest>  .*)\Z", re.S)
_D2_FIELD = re.compile(r"(?<!\S)(?P<key>(?:\[metric\])?[A-Za-z_][\w./\-\x01]*): (?:(?P<num>\x01)(?P<unit>M)?"
                       r"|(?P<const>[-+]?(?i:nan|inf))|\S+)(?=\s|\Z)")
D2_RENAMES = {"time": "avg_time_s", "last_time": "step_time_s", "data_time": "data_time_s",
              "last_data_time": "last_data_time_s", "max_mem": "max_memory_mb"}  # seconds; MiB

# fastai's console table (fastai/callback/progress.py, ProgressCallback: mbar.write(recorder.metric_names, table=True)
# once, then mbar.write([f'{l:.6f}' if isinstance(l, float) else str(l) for l in log], table=True) per epoch;
# fastprogress/fastprogress.py, ConsoleMasterBar.write: the header names padded to 8 characters and joined by two
# spaces, each row's values padded to their column's width + 2). The columns (fastai/learner.py, Recorder.before_fit):
# `epoch` (from 0, each fit), `train_loss` (the smoothed loss), `valid_loss`, the metrics (computed on the
# validation set; `train_`/`valid_` prefixed when train_metrics is on), `time` (fastprogress format_time: mm:ss or
# h:mm:ss). fastprogress redraws its bars with "\r" before the row, on the same physical line. A row has no words:
# its names are its header's, the last one above it. The epoch is the step; a later table (fine_tune's second fit)
# whose epochs would go back continues after the last step before it.
_FASTAI_HEAD = re.compile(r"[ \t]*epoch(?P<names>(?:  +[A-Za-z_][^\s]*)+) *\Z")
_FASTAI_ROW = re.compile(r"[ \t]*(?P<epoch>\x01)(?P<cells>(?:  +(?:\x01|[-+]?(?i:nan|inf)|None|#na#))*)  +(?:\x01:)?"
                         r"\x01:\x01 *\Z")
_FASTAI_CELL = re.compile(r"  +(?P<cell>\x01|[-+]?(?i:nan|inf)|None|#na#)")

# Per-trainer names, for keys that canonical_metric would not map or would map wrongly.
TORCHTUNE_RENAMES = {"tokens_per_second_per_gpu": "tokens_per_s"}  # per device, as torchtitan's tps
LLMC_RENAMES = {"trl": "loss", "tel": "eval_loss", "eval": "eval_hellaswag_acc", "norm": "grad_norm"}
TITAN_RENAMES = {"tps": "tokens_per_s", "per_device_tps": "tokens_per_s_per_device", "step_time": "step_time_s"}
MM_RENAMES = {"time": "time_s", "data_time": "data_time_s", "memory": "memory_mb"}  # seconds; MB (get_max_cuda_memory)
FRAMEWORK_UNITS = {"ms": "_ms", "s": "_s", "gib": "_gib", "%": ""}

_OVERFLOW = re.compile(r"(?i)\boverflow\b.*\b(?:skip\w*|scale|ignor\w*|reduc\w*)|\bskip\w*\b.*\boverflow"
                       r"|\bgrad(?:ient)? overflow\b")
_NAN_CLAMP = re.compile(r"(?i)(?:non-?finite|\bnan\b|\binf\b).*\b(?:clamp\w*|replac\w*|zero\w*)\b"
                        r"|\bclamp\w*\b.*(?:non-?finite|\bnan\b|\binf\b)")
# A value reported non-finite: "non-finite loss", "loss is nan", "loss: nan", "NaN detected", "found inf".
_NAN = re.compile(
    r"(?i)\b(?:non-?finite|nan|inf)\s+(?:\w*loss\w*|grad\w*|gradients?|values?|weights?)\b"
    r"|\b(?:\w*loss\w*|grad\w*|gradients?|values?)\s*(?:is|was|=|:|became|becomes|contains)?\s*(?:a\s+)?"
    r"\(?(?:non-?finite|nan|inf)\b"
    r"|\b(?:nan|inf|non-?finite)\b[^.;]{0,40}\b(?:detected|found|encountered|produced|occurred)\b"
    r"|\b(?:detected|found|encountered|produced|got)\s+(?:a\s+)?(?:non-?finite|nan|inf)\b")
_ERROR = re.compile(r"Traceback \(most recent call last\)"
                    rf"|^\s*{_LAUNCHER_TAGS}\s*(?:[\w.]+\.)?[A-Z]\w*(?:Error|Exception)(?::|\s*\Z)"
                    rf"|^{_PREFIX_UNTAGGED}\[(?i:error|fatal)\]"
                    r"|[\[|]\s*(?:ERROR|FATAL|CRITICAL)\s*[\]|]|\b(?:ERROR|FATAL|CRITICAL)\s*:"
                    r"|(?i:out of memory)|OutOfMemory|\boom-kill|^\s*Killed\s*\Z")
_OOM = re.compile(r"(?i)out of memory|OutOfMemory|\boom\b|oom-kill|cannot allocate memory")
_WARNING = re.compile(rf"^{_PREFIX_UNTAGGED}\[(?i:warn(?:ing)?)\]"
                      r"|[\[|]\s*WARN(?:ING)?\s*[\]|]|\bWARN(?:ING)?\s*:|\b[A-Z]\w*Warning\s*:|^\s*(?i:warning)\s*:")
_TRACEBACK = re.compile(r"Traceback \(most recent call last\)")
# every event above needs one of these words (lower case)
_EVENT_WORDS = re.compile("overflow|nan|inf|finite|clamp|error|exception|traceback|warn|killed|memory|fatal|critical"
                          "|oom")
# every line shape that gives points needs one of these (lower case)
_POINT_WORDS = re.compile(r"step|iter|eval|val|train|hella|loss|\{|trl:|tel:")  # trl/tel: llm.c's main.log
_ENDS_WITH_NUMBER = re.compile(r"\x01(?:ms|s|%|GB|MB)?\Z")

# Event data, read from the line's own text.
_SCALE_FROM_TO = (
    re.compile(rf"(?i)attempted loss scale:?\s*(?P<from>{NUM}),?\s*reducing to\s*(?P<to>{NUM})"),
    re.compile(rf"(?i)loss scale:?\s*(?P<from>{NUM})\s*(?:->|→|=>|to)\s*(?P<to>{NUM})"),
    re.compile(rf"(?i)(?:setting|reducing|reduce|set|lowering)\s+(?:the\s+)?loss\s+scale\s*(?:to)?:?\s*(?P<to>{NUM})"),
)
_OVERFLOW_STEP = re.compile(r"(?i)overflow on iteration\s*(?P<step>\d+)")
_CLAMP_METRIC = re.compile(r"(?P<metric>\w+) produced non-finite|non-?finite (?:value )?(?:in|for) (?P<metric2>\w+)")
_NAN_VALUE = re.compile(r"(?i)\((?P<value>[-+]?(?:nan|inf))\)")
_NAN_METRIC = re.compile(r"(?i)\b(?P<metric>\w*loss\w*|grad\w*)\b")
_CAP = re.compile(rf"(?i)capped at\s*(?P<cap>{NUM})")
_CAPPED_LOSS = re.compile(rf"(?i)\bloss\s+(?P<loss>{NUM})\s+too high")


# --- plans --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Field:
    """One number of a line shape that becomes a point."""

    slot: int  # which number of the line
    name: str  # SLOT marks where a number of the key itself goes (`accuracy/top1`): one per key_slots entry
    transform: str = ""  # "" | "per_ms" | "per_s": steps_per_s derived from a step time
    more: tuple[int, ...] = ()  # the value's further thousands groups (`tps: 1,234`: slot holds 1, more 234)
    key_slots: tuple[int, ...] = ()  # numbers inside the key, in order


@dataclass(frozen=True)
class _Plan:
    """What one line shape means: where its step is, which number is which metric, which event it is."""

    family: str = ""  # "", "anchor", "megatron", "megatron_wrapped", "eval", "fairseq", "dict", "logtxt", ...
    step_slot: int | None = None
    step_offset: int = 0  # added to the step read (llm.c prints step + 1 where its main.log writes step)
    epoch_slot: int | None = None  # with epoch_len_slot: the step is (epoch - epoch_base) * epoch_len + step_slot's
    epoch_len_slot: int | None = None  # number
    epoch_base: int = 1  # the number of the first epoch: 1 in MMEngine's logs, 0 in timm's
    context: str = "next"  # where a line without its own step takes one: "next", "prev" or "next_or_after" (the
    # next step line's step; after the last step line, that step + 1)
    fields: tuple[_Field, ...] = ()
    constants: tuple[tuple[str, float], ...] = ()  # a literal nan/inf value: the same for every line of the shape
    event: str | None = None
    nan_slot: int | None = None  # Megatron `number of nan iterations`
    skipped_slot: int | None = None  # Megatron `number of skipped iterations`
    has_loss: bool = True  # Megatron: the line printed its lm loss (a NaN loss is left out of the line)
    dict_without_step: bool = False  # an HF Trainer log dict: metrics but no step
    ends_with_number: bool = False  # the last number runs to the end of the line (cut in an unterminated line)
    n_slots: int = 0
    rank_slot: int | None = None  # the number of a launcher's rank tag (`[default1]:`, `[rank1]:`, `[Rank 1]`)
    local_rank_slot: int | None = None  # torchrun's local rank inside srun's label (`1: [default3]:`; see
    global_rank_slot: int | None = None  # _SRUN_TORCHRUN), and PyTorch's `[rankN]:` after both
    header: bool = False  # a step line that logs nothing itself: the lines after it log for it (Keras' `Epoch 2/5`)
    progress_slots: tuple[int, int] | None = None  # (done, total) of a progress bar: the line counts only when equal
    n_columns: int = 0  # a table row's number of columns (fastai), to match its header's

    @property
    def points(self) -> bool:
        return bool(self.fields or self.constants)

    @property
    def anchor(self) -> bool:
        return self.step_slot is not None

    @property
    def useful(self) -> bool:
        return self.points or self.anchor or self.event is not None or self.dict_without_step \
            or self.family in ("megatron_wrapped", "fastai_header")

    @property
    def slots(self) -> tuple[int, ...]:
        needed = {f.slot for f in self.fields}
        for f in self.fields:
            needed.update(f.more)
            needed.update(f.key_slots)
        needed.update(s for s in (self.step_slot, self.nan_slot, self.skipped_slot, self.epoch_slot,
                                  self.epoch_len_slot, self.rank_slot, self.local_rank_slot,
                                  self.global_rank_slot) if s is not None)
        needed.update(self.progress_slots or ())
        return tuple(sorted(needed))

    @property
    def key_slots(self) -> tuple[int, ...]:
        return tuple(sorted({s for f in self.fields for s in f.key_slots}))


_NOTHING = _Plan()
CONTEXT_CODES = {"next": 1, "prev": 2, "next_or_after": 3, "first_after": 4}  # first_after: the previous step
# line's step, for the first such line after it only (a Keras epoch's bar; a later bar is model.evaluate's)
SECOND_AFTER = -2  # the step of a "first_after" line that is not the first after its step line: not read
_PLANS: dict[str, _Plan] = {}


def _template(text: str) -> tuple[str, list[str]]:
    """A line's template (each number replaced by SLOT) and its numbers, in order."""
    return _NUM.sub(SLOT, text), _NUM.findall(text)


def plan_of(template: str) -> _Plan:
    """The plan for a template, cached: log files repeat a few shapes, and so do files of one framework."""
    plan = _PLANS.get(template)
    if plan is None:
        if len(_PLANS) >= PLAN_CACHE_SIZE:
            _PLANS.clear()
        plan = _make_plan(template)
        if plan.useful:
            rank, local, global_rank = _rank_slots(template)
            plan = replace(plan, rank_slot=rank, local_rank_slot=local, global_rank_slot=global_rank)
        if len(template) <= PLAN_CACHE_MAX_CHARS:
            _PLANS[template] = plan
    return plan


def _rank_slots(template: str) -> tuple[int | None, int | None, int | None]:
    """Which numbers of a line are the rank its launcher tagged it with, if any (see _RANK_LEADS, _RANK_TAG), and
    under srun's label, torchrun's local rank and PyTorch's global rank tag (see _SRUN_TORCHRUN)."""
    m = _SRUN_TORCHRUN.match(template)
    if m is not None:
        tag = _RANK_TAG.search(template, m.end(), _HEAD.match(template).end())
        return (_slot_index(template, m.start("rank")), _slot_index(template, m.start("local")),
                None if tag is None else _slot_index(template, tag.start("rank")))
    return _rank_slot(template), None, None


def _rank_slot(template: str) -> int | None:
    """Which number of a line is the rank its launcher tagged it with, if any (see _RANK_LEADS, _RANK_TAG)."""
    m = next((m for lead in _RANK_LEADS if (m := lead.match(template))), None)
    if m is None:
        m = _RANK_TAG.search(template, 0, _HEAD.match(template).end())
    return None if m is None else _slot_index(template, m.start("rank"))


def _make_plan(template: str) -> _Plan:
    body = template.rstrip("\r\n")
    if "\r" in body:  # a progress bar redrawn with carriage returns: the line's text is what was written last
        head, _, body = body.rpartition("\r")
        return _shifted(_make_plan(body), head.count(SLOT))
    plan = _points_plan(body)
    if plan is not None and plan.family == "megatron" and not body.rstrip().endswith("|"):
        plan = replace(plan, family="megatron_wrapped")  # cut by the terminal: parsed after joining its lines
    if plan is None or not plan.points and plan.family != "megatron_wrapped":
        event = _event_kind(body)
        if plan is None:
            if event is None:
                return _NOTHING
            plan = _Plan(event=event)
        elif event is not None:
            plan = replace(plan, event=event)
    return replace(plan, n_slots=body.count(SLOT), ends_with_number=bool(_ENDS_WITH_NUMBER.search(body)))


def _shifted(plan: _Plan, offset: int) -> _Plan:
    """A plan for the end of a line, made to count the numbers before that end too."""
    if not plan.useful:
        return plan

    def move(slot: int | None) -> int | None:
        return None if slot is None else slot + offset

    def moved(slots: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(s + offset for s in slots)

    return replace(plan, step_slot=move(plan.step_slot), nan_slot=move(plan.nan_slot),
                   skipped_slot=move(plan.skipped_slot), epoch_slot=move(plan.epoch_slot),
                   epoch_len_slot=move(plan.epoch_len_slot), n_slots=plan.n_slots + offset,
                   progress_slots=None if plan.progress_slots is None else moved(plan.progress_slots),
                   fields=tuple(replace(f, slot=f.slot + offset, more=moved(f.more), key_slots=moved(f.key_slots))
                                for f in plan.fields))


def _points_plan(body: str) -> _Plan | None:
    if not _POINT_WORDS.search(body.lower()):
        return _keras_epoch_plan(body) or _fastai_row_plan(body)
    for shape in (_fastai_head_plan, _torchtune_plan, _llmc_log_plan, _llmc_stdout_plan, _torchtitan_plan,
                  _mmengine_plan, _timm_plan, _keras_plan, _detectron2_plan, _megatron_valid_plan, _eval_plan,
                  _logtxt_plan, _fairseq_plan, _dict_plan, _epoch_batch_plan, _anchor_plan, _bare_loss_plan,
                  _hellaswag_plan, _epoch_plan):
        plan = shape(body)
        if plan is not None:
            return plan
    return None


def _slot_index(body: str, position: int) -> int:
    return body.count(SLOT, 0, position)


def _fields(body: str, start: int, end: int, family: str) -> tuple[list[_Field], list[tuple[str, float]], dict]:
    """Parse `key: value` fields between start and end: (fields, constants, {normalised key: slot})."""
    fields: list[_Field] = []
    constants: list[tuple[str, float]] = []
    keys: dict[str, int | None] = {}
    for span in _FIELD_SPANS.finditer(body, start, end):
        lead = len(span.group()) - len(span.group().lstrip(" \t:"))  # `Step 0:   KD Raw: ...`
        m = _FIELD.fullmatch(body, span.start() + lead, span.end())
        if m is None:
            continue
        key, unit = m.group("key"), (m.group("unit") or "").lower()
        name = _metric_name(key, unit, family)
        compact = re.sub(r"\s+", "", key.lower())
        if m.group("slot") is not None:
            slot = _slot_index(body, m.start("slot"))
            keys[compact] = slot
            if name is not None:
                fields.append(_Field(slot, name))
        else:
            keys[compact] = None
            if name is not None:
                constants.append((name, float(m.group("const"))))
    _add_speed(fields, constants)
    return fields, constants, keys


def _add_speed(fields: list[_Field], constants: list[tuple[str, float]]) -> None:
    """Megatron, nanoGPT, llm.c, MMEngine log a time per step: steps_per_s is its inverse (when not logged too)."""
    names = {f.name for f in fields} | {n for n, _ in constants}
    if "steps_per_s" in names:
        return
    for f in list(fields):
        base, _, unit = f.name.rpartition("_")
        if base in STEP_TIME_BASES and unit in ("ms", "s") and not f.more:
            fields.append(_Field(f.slot, "steps_per_s", "per_ms" if unit == "ms" else "per_s"))
            return


def _metric_name(key: str, unit: str, family: str) -> str | None:
    """A logged key as a metric name that canonical_metric understands; None for keys that are not metrics."""
    raw = _SQUARED.sub("_squared", key.strip().strip("\"'"))
    normal = re.sub(r"[\s\-]+", "_", raw.strip().lower()).strip("_")
    compact = re.sub(r"[\s_]+", "", raw.lower())
    if family == "megatron" and compact in MEGATRON_RENAMES:
        return MEGATRON_RENAMES[compact]
    if family == "megatron_valid":
        base = MEGATRON_VALID_RENAMES.get(compact, re.sub(r"_value\Z", "", normal))
        return "eval_" + base
    if family == "fairseq":
        if normal in FAIRSEQ_IGNORED:
            return None
        normal = FAIRSEQ_RENAMES.get(normal, normal)
    if family == "dict" and normal in HF_IGNORED:
        return None
    if normal in COUNTER_KEYS:  # a second counter beside the line's step (LitGPT's `iter 8 step 2`): no metric
        return None
    renamed = KEY_RENAMES.get(normal) or KEY_RENAMES.get(compact)
    if renamed is None and family == "megatron":
        renamed = next((v for k, v in KEY_RENAMES.items() if k.replace("_", "") == compact), None)
    name = renamed or normal
    suffix = UNIT_SUFFIXES.get(unit, "")
    if suffix and not name.endswith(suffix):
        name += suffix
    if family == "eval" and not name.startswith(("eval_", "val_", "valid_", "validation_")):
        name = "eval_" + name
    return name


def _anchor_plan(body: str) -> _Plan | None:
    m = _ANCHOR.match(body)
    if m is None:
        return None
    megatron = m.group("kw").lower() == "iteration" and m.group("total") is not None
    family = "megatron" if megatron else "anchor"
    fields, constants, keys = _fields(body, m.start("rest"), m.end("rest"), family)
    if m.group("epoch") is not None and not any(f.name == "epoch" for f in fields):
        fields.insert(0, _Field(_slot_index(body, m.start("epoch")), "epoch"))
    plan = _Plan(family=family, step_slot=_slot_index(body, m.start("step")), fields=tuple(fields),
                 constants=tuple(constants))
    if megatron:
        plan = replace(plan, nan_slot=keys.get("numberofnaniterations"),
                       skipped_slot=keys.get("numberofskippediterations"), has_loss="lmloss" in keys)
    return plan


def _eval_plan(body: str) -> _Plan | None:
    m = _EVAL.match(body)
    if m is None:
        return None
    fields, constants, _ = _fields(body, m.start("rest"), m.end("rest"), "eval")
    if not fields and not constants:
        return None
    step = m.group("step")
    return _Plan(family="eval", step_slot=None if step is None else _slot_index(body, m.start("step")),
                 fields=tuple(fields), constants=tuple(constants))


def _megatron_valid_plan(body: str) -> _Plan | None:
    m = _MEGATRON_VALID.match(body)
    if m is None:
        return None
    fields, constants, _ = _fields(body, m.start("rest"), m.end("rest"), "megatron_valid")
    step = None if m.group("step") is None else _slot_index(body, m.start("step"))
    return _Plan(family="megatron_valid", step_slot=step, context="prev" if step is None else "next",
                 fields=tuple(fields), constants=tuple(constants))


def _logtxt_plan(body: str) -> _Plan | None:
    m = _LOGTXT.fullmatch(body)
    if m is None:
        return None
    name = {"train": "loss", "val": "eval_loss", "hella": "eval_hellaswag_acc"}[m.group("kind")]
    return _Plan(family="logtxt", step_slot=0, fields=(_Field(1, name),))


def _dict_fields(body: str, start: int, end: int, family: str) -> _Plan:
    fields, constants, keys = _fields(body, start, end, family)
    step_slot = next((keys[k] for k in DICT_STEP_KEYS if keys.get(k) is not None), None)
    fields = [f for f in fields if f.slot != step_slot]
    if step_slot is None:
        lossy = any(f.name in ("loss", "eval_loss", "train_loss") for f in fields)
        return _Plan(family=family, dict_without_step=lossy)
    return _Plan(family=family, step_slot=step_slot, fields=tuple(fields), constants=tuple(constants))


def _fairseq_plan(body: str) -> _Plan | None:
    m = _FAIRSEQ.match(body)
    if m is None:
        return None
    if m.group("tag") == "train":  # the epoch summary: averages over the epoch, not values at its last update
        return _Plan(family="fairseq")
    return _dict_fields(body, m.start("rest"), m.end("rest"), "fairseq")


def _dict_plan(body: str) -> _Plan | None:
    m = _DICT.match(body)
    if m is None:
        return None
    plan = _dict_fields(body, m.start("rest"), m.end("rest"), "dict")
    return plan if plan.anchor or plan.dict_without_step else None


def _bare_loss_plan(body: str) -> _Plan | None:
    m = _BARE_LOSS.match(body)
    if m is None:
        return None
    return _Plan(family="bare", context="prev", fields=(_Field(_slot_index(body, m.start("value")), "loss"),))


def _hellaswag_plan(body: str) -> _Plan | None:
    m = _HELLASWAG.match(body)
    if m is None:
        return None
    # evaluated at the top of a step (build-nanogpt, llm.c), and llm.c once more after its last step
    return _Plan(family="hellaswag", context="next_or_after",
                 fields=(_Field(_slot_index(body, m.start("value")), "eval_hellaswag_acc"),))


def _framework_name(key: str, unit: str, renames: dict[str, str], evaluation: bool = False) -> str:
    """A trainer's key as a metric name: normalised, renamed, a unit suffix, `eval_` for validation values."""
    normal = re.sub(r"[\s\-]+", "_", key.strip().lower()).strip("_")
    name = renames.get(normal, normal)
    suffix = FRAMEWORK_UNITS.get(unit.lower(), "")
    if suffix and not name.endswith(suffix):
        name += suffix
    if evaluation and not name.startswith(("eval_", "val_", "valid_", "validation_")):
        name = "eval_" + name
    return name


def _keyed_field(body: str, key_start: int, key: str, value_start: int, name: str, more: tuple[int, ...] = ()
                 ) -> _Field:
    """A field whose key may hold numbers of its own (`accuracy/top1`, `d0.loss_cls`): their slots are kept."""
    first = _slot_index(body, key_start)
    key_slots = tuple(range(first, first + key.count(SLOT)))
    return _Field(_slot_index(body, value_start), name, more=more, key_slots=key_slots)


def _value_field(body: str, m: re.Match, group: str, name: str, fields: list[_Field],
                 constants: list[tuple[str, float]]) -> None:
    """The number (a slot) or the literal nan/inf of a named group, as a field or a constant."""
    text = m.group(group)
    if text is None:
        return
    if text == SLOT:
        fields.append(_Field(_slot_index(body, m.start(group)), name))
    else:
        constants.append((name, float(text)))


def _torchtune_plan(body: str) -> _Plan | None:
    m = _TORCHTUNE.match(body)
    if m is None:
        return None
    fields: list[_Field] = []
    constants: list[tuple[str, float]] = []
    for f in _TUNE_FIELD.finditer(body, m.start("rest"), m.end("rest")):
        group = "tensor" if f.group("tensor") is not None else "value"
        value = f.group(group).strip()
        name = _framework_name(f.group("key"), "", TORCHTUNE_RENAMES)
        if value == SLOT:
            start = f.start(group) + f.group(group).index(SLOT)
            fields.append(_keyed_field(body, f.start("key"), f.group("key"), start, name))
        elif re.fullmatch(r"[-+]?(?i:nan|inf)", value) and SLOT not in name:
            constants.append((name, float(value)))
    return _Plan(family="torchtune", step_slot=_slot_index(body, m.start("step")), fields=tuple(fields),
                 constants=tuple(constants))


def _llmc_log_plan(body: str) -> _Plan | None:
    m = _LLMC_LOG.match(body)
    if m is None:
        return None
    fields: list[_Field] = []
    constants: list[tuple[str, float]] = []
    for f in _LLMC_FIELD.finditer(body, m.start("rest"), m.end("rest")):
        _value_field(body, f, "value", _framework_name(f.group("key"), f.group("unit") or "", LLMC_RENAMES),
                     fields, constants)
    return _Plan(family="llmc", step_slot=_slot_index(body, m.start("step")), fields=tuple(fields),
                 constants=tuple(constants))


def _llmc_stdout_plan(body: str) -> _Plan | None:
    for pattern, offset in [(p, -1) for p in _LLMC_STDOUT] + [(_LLMC_CPU, 0), (_LLMC_VAL, 0)]:
        m = pattern.match(body)
        if m is None:
            continue
        fields: list[_Field] = []
        constants: list[tuple[str, float]] = []
        for group in pattern.groupindex:
            if group != "step":
                _value_field(body, m, group, group, fields, constants)
        _add_speed(fields, constants)
        if "step" not in pattern.groupindex:  # llm.c evaluates at the top of a step, and once more after the last
            return _Plan(family="eval", context="next_or_after", fields=tuple(fields), constants=tuple(constants))
        return _Plan(family="llmc", step_slot=_slot_index(body, m.start("step")), step_offset=offset,
                     fields=tuple(fields), constants=tuple(constants))
    return None


def _torchtitan_plan(body: str) -> _Plan | None:
    m = _TITAN_HEAD.match(body)
    if m is None:
        return None
    evaluation = m.group("validate") is not None
    fields: list[_Field] = []
    constants: list[tuple[str, float]] = []
    keys = set()
    pos = m.end()
    while True:  # every field `key: value`, separated by spaces and colour codes, or the line is no metrics line
        pos = _TITAN_SEP.match(body, pos).end()
        if pos >= len(body):
            break
        f = _TITAN_FIELD.match(body, pos)
        if f is None:
            return None
        pos = f.end()
        key = f.group("key")
        keys.add(key)
        name = _framework_name(key, f.group("unit") or "", TITAN_RENAMES, evaluation)
        if f.group("num") is not None:
            first = _slot_index(body, f.start("num"))
            fields.append(_Field(first, name, more=tuple(range(first + 1, first + f.group("num").count(SLOT)))))
        elif f.group("const") is not None:
            constants.append((name, float(f.group("const"))))
    if "loss" not in keys:
        return None
    _add_speed(fields, constants)
    return _Plan(family="torchtitan", step_slot=_slot_index(body, m.start("step")), fields=tuple(fields),
                 constants=tuple(constants))


def _mmengine_plan(body: str) -> _Plan | None:
    m = _MM_HEAD.match(body)
    if m is None:
        return None
    mode = m.group("mode") or "train"  # mmcv names only the validation mode
    if mode == "test":
        return _Plan(family="mmengine")  # after training: no training step
    rest = (m.start("rest"), m.end("rest"))
    found = list(_MM_FIELD.finditer(body, *rest))
    if mode == "val" and any(f.group("key") == "eta" for f in found):
        return _Plan(family="mmengine")  # a progress line of the validation pass: its counter is no training step
    skipped = MM_EVAL_SKIPPED if mode == "val" else MM_SKIPPED
    fields: list[_Field] = []
    constants: list[tuple[str, float]] = []
    for f in found:
        key = f.group("key")
        if key in skipped or f.group("time") is not None:
            continue
        name = _framework_name(key, "", MM_RENAMES, evaluation=mode == "val")
        if f.group("num") is not None:
            fields.append(_keyed_field(body, f.start("key"), key, f.start("num"), name))
        elif f.group("const") is not None and SLOT not in key:
            constants.append((name, float(f.group("const"))))
    if mode == "val":  # a validation summary: the training step is the last one logged before it
        return _Plan(family="eval", context="prev", fields=tuple(fields), constants=tuple(constants))
    _add_speed(fields, constants)
    step = _slot_index(body, m.start("iter"))
    if m.group("kind") == "Iter":
        if m.group("epoch") is not None:
            return None
        return _Plan(family="mmengine", step_slot=step, fields=tuple(fields), constants=tuple(constants))
    if m.group("epoch") is None or m.group("len") is None:
        return None  # an epoch's iteration without the epoch's length: no global step to compute
    epoch = _slot_index(body, m.start("epoch"))
    fields.insert(0, _Field(epoch, "epoch"))
    return _Plan(family="mmengine", step_slot=step, epoch_slot=epoch, epoch_len_slot=_slot_index(body, m.start("len")),
                 fields=tuple(fields), constants=tuple(constants))


def _timm_plan(body: str) -> _Plan | None:
    m = _TIMM_HEAD.match(body)
    if m is None:
        return None
    fields: list[_Field] = []
    constants: list[tuple[str, float]] = []
    pos, end = m.start("rest"), m.end("rest")
    while pos < end:
        f = _TIMM_FIELD.match(body, pos, end)
        if f is None:
            break
        key = f.group("key").lower()
        _value_field(body, f, "value", TIMM_RENAMES.get(key, key), fields, constants)
        pos = f.end()
    epoch = _slot_index(body, m.start("epoch"))
    fields.insert(0, _Field(epoch, "epoch"))
    _add_speed(fields, constants)
    return _Plan(family="timm", step_slot=_slot_index(body, m.start("iter")), epoch_slot=epoch,
                 epoch_len_slot=_slot_index(body, m.start("len")), epoch_base=0, fields=tuple(fields),
                 constants=tuple(constants))


def _fastai_head_plan(body: str) -> _Plan | None:
    m = _FASTAI_HEAD.match(body)
    if m is None or not m.group("names").rstrip().endswith("time"):
        return None
    return _Plan(family="fastai_header", n_columns=1 + len(m.group("names").split()))


def _fastai_row_plan(body: str) -> _Plan | None:
    m = _FASTAI_ROW.match(body)
    if m is None:
        return None
    fields: list[_Field] = []
    constants: list[tuple[str, float]] = []
    cells = list(_FASTAI_CELL.finditer(body, m.start("cells"), m.end("cells")))
    for column, cell in enumerate(cells, start=1):  # named by column number until its header is known
        if cell.group("cell") == SLOT:
            fields.append(_Field(_slot_index(body, cell.start("cell")), str(column)))
        elif cell.group("cell") not in ("None", "#na#"):
            constants.append((str(column), float(cell.group("cell"))))
    return _Plan(family="fastai_row", epoch_slot=_slot_index(body, m.start("epoch")), fields=tuple(fields),
                 constants=tuple(constants), n_columns=len(cells) + 2)


def _fastai_names(header: str) -> list[str]:
    """A fastai header's metric names, epoch and time left out: metrics after `valid_loss` are the validation set's
    (Recorder.before_fit names them so only when train_metrics is on too)."""
    names, valid = [], False
    for name in header.split()[1:-1]:
        if name == "valid_loss":
            valid = True
        elif valid and not name.startswith(("train_", "valid_")):
            name = "valid_" + name
        names.append(name)
    return names


def _detectron2_plan(body: str) -> _Plan | None:
    m = _D2_HEAD.match(body)
    if m is None:
        return None
    fields: list[_Field] = []
    constants: list[tuple[str, float]] = []
    for f in _D2_FIELD.finditer(body, m.start("rest"), m.end("rest")):
        key = f.group("key")
        name = _framework_name(key.replace("[metric]", ""), "", D2_RENAMES)
        if f.group("num") is not None:
            fields.append(_keyed_field(body, f.start("key"), key, f.start("num"), name))
        elif f.group("const") is not None and SLOT not in key:
            constants.append((name, float(f.group("const"))))
    if not any(f.name.endswith("loss") for f in fields) and not any(n.endswith("loss") for n, _ in constants):
        return None
    _add_speed(fields, constants)
    return _Plan(family="detectron2", step_slot=_slot_index(body, m.start("step")), fields=tuple(fields),
                 constants=tuple(constants))


def _keras_epoch_plan(body: str) -> _Plan | None:
    m = _KERAS_EPOCH.match(body)
    if m is None:
        return None
    return _Plan(family="epoch", step_slot=_slot_index(body, m.start("epoch")), header=True)


def _keras_plan(body: str) -> _Plan | None:
    m = _KERAS_BAR.match(body)
    if m is None:
        return _keras_epoch_plan(body)
    fields: list[_Field] = []
    constants: list[tuple[str, float]] = []
    for f in _KERAS_FIELD.finditer(body, m.start("rest"), m.end("rest")):
        key, value = f.group("key"), f.group("value")
        name = _framework_name(key, "", KERAS_RENAMES)
        if value == SLOT:
            fields.append(_keyed_field(body, f.start("key"), key, f.start("value"), name))
        elif SLOT not in key:
            constants.append((name, float(value)))
    for time, unit in (("time", "unit"), ("time2", "unit2")):
        if m.group(time) is not None:
            fields.append(_Field(_slot_index(body, m.start(time)), "step_time_" + m.group(unit)))
    _add_speed(fields, constants)
    done = m.group("done")
    progress = None if done is None else (_slot_index(body, m.start("done")), _slot_index(body, m.start("total")))
    return _Plan(family="epoch", context="first_after", fields=tuple(fields), constants=tuple(constants),
                 progress_slots=progress)


def _epoch_batch_plan(body: str) -> _Plan | None:
    m = _EPOCH_BATCH_HEAD.match(body)
    if m is None:
        return None
    fields, constants, _ = _fields(body, m.start("rest"), m.end("rest"), "anchor")
    if not fields and not constants:
        return None
    epoch = _slot_index(body, m.start("epoch"))
    return _Plan(family="anchor", step_slot=_slot_index(body, m.start("iter")), epoch_slot=epoch,
                 epoch_len_slot=_slot_index(body, m.start("len")), fields=(_Field(epoch, "epoch"), *fields),
                 constants=tuple(constants))


def _epoch_plan(body: str) -> _Plan | None:
    m = _EPOCH_HEAD.match(body)
    if m is None:
        return None
    # ` - ` separates fields as `,` and `|` do (Keras' progress line, and loops written after it)
    fields, constants, _ = _fields(body.replace(" - ", " | "), m.start("rest"), m.end("rest"), "anchor")
    if not fields and not constants:
        return None
    return _Plan(family="epoch", step_slot=_slot_index(body, m.start("epoch")), fields=tuple(fields),
                 constants=tuple(constants))


def _event_kind(body: str) -> str | None:
    """The most specific event a line reports, or None."""
    if not _EVENT_WORDS.search(body.lower()):  # most lines: no further regex needed
        return None
    if _OVERFLOW.search(body):
        return "overflow"
    if _NAN_CLAMP.search(body):
        return "nan_clamp"
    if _NAN.search(body):
        return "nan"
    if _ERROR.search(body):
        return "error"
    if _WARNING.search(body):
        return "warning"
    return None


def _event_data(kind: str, text: str) -> tuple[dict[str, Any], int | None]:
    """Numbers an event line states (loss scales, the metric clamped, a cap), and a step it names itself."""
    data: dict[str, Any] = {}
    own_step = None
    if kind == "overflow":
        for pattern in _SCALE_FROM_TO:
            m = pattern.search(text)
            if m:
                if "from" in pattern.groupindex:
                    data["scale_from"] = float(m.group("from"))
                data["scale_to"] = float(m.group("to"))
                break
        m = _OVERFLOW_STEP.search(text)
        if m:
            own_step = int(m.group("step"))
    elif kind in ("nan_clamp", "nan"):
        m = _CLAMP_METRIC.search(text) or _NAN_METRIC.search(text)
        if m:
            data["metric"] = next(g for g in m.groups() if g)
        m = _NAN_VALUE.search(text)
        if m:
            data["value"] = m.group("value").lower()
    elif kind == "warning":
        m = _CAP.search(text)
        if m:
            data["cap"] = float(m.group("cap"))
        m = _CAPPED_LOSS.search(text)
        if m:
            data["loss"] = float(m.group("loss"))
    elif kind == "error" and _OOM.search(text):
        data["oom"] = True
    return data, own_step


# --- sniffing -----------------------------------------------------------------------------------------------------

def sniff(path: Path) -> bool:
    """A text file (by name and content) with at least one recognised log line near its start."""
    if path.suffix.lower() not in TEXT_SUFFIXES:
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError:
        return False
    head = _from_utf16(head)
    nul = head.find(b"\x00", 0, BINARY_PROBE_BYTES)
    if not head or nul != -1 and b"\n" not in head[:nul]:  # binary from the start
        return False
    if nul != -1:  # NUL bytes after whole lines: a crash's zero-filled tail, or garbage inside a log
        head = head[:nul]
    text = head.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if len(head) == SNIFF_BYTES and len(lines) > 1:
        cut = lines.pop()  # cut by the probe; of a bar redrawn with \r (a long Keras epoch), its whole drawings count
        if "\r" in cut:
            lines.append(cut[:cut.rfind("\r")].rstrip("\x08"))
    if path.suffix.lower() in MARKDOWN_SUFFIXES or sum(_is_fence(line) for line in lines) >= 2:
        lines = _code_lines(lines)
    for line in lines:
        low = line.lower()
        if len(line) > MAX_LINE_CHARS or not (_POINT_WORDS.search(low) or _EVENT_WORDS.search(low)):
            continue
        plan = plan_of(_NUM.sub(SLOT, line))
        # warnings and errors alone do not make a file a training log (a README says "Error" too)
        if plan.points or plan.dict_without_step or plan.family == "fastai_header" \
                or plan.event in ("overflow", "nan_clamp", "nan") \
                or _TRACEBACK.search(line):
            return True
    return False


def _is_fence(line: str) -> bool:
    stripped = line.lstrip(" ")
    return len(line) - len(stripped) <= 3 and stripped.startswith(("```", "~~~"))


def _code_lines(lines: list[str]) -> list[str]:
    inside, kept = False, []
    for line in lines:
        if _is_fence(line):
            inside = not inside
        elif inside:
            kept.append(line)
    return kept


# --- reading --------------------------------------------------------------------------------------------------------

def read(paths: list[Path], root: Path) -> Ingested:
    """Read every claimed text file; points another file of the run already holds are not repeated."""
    out = Ingested(FORMAT)
    seen: list[pd.DataFrame] = []
    for path in paths:
        rel = relative(path, root)
        result = read_file(path, rel, events_only=_metrics_elsewhere(path), rank=rank_from_path(path))
        out.events.extend(result.events)
        out.notes.extend(result.notes)
        out.hparams.extend(result.hparams)
        frame = result.frame
        if frame is not None and len(frame):
            frame = _drop_repeats(frame, seen, rel, out.notes)
            seen.append(frame)
            out.add_frame(rel, frame)
    return out


def rank_from_path(path: Path) -> int | None:
    """The rank a per-rank log's path names: torch.distributed.elastic's --log-dir (torchrun, accelerate launch) writes
    `<log_dir>/<run_id>_<random>/attempt_<n>/<local_rank>/stdout.log` and `stderr.log` (DefaultLogsSpecs.reify,
    torch/distributed/elastic/multiprocessing/api.py); DeepSpeed's --enable_each_rank_log writes
    `<dir>/<time>_rank<rank>.log` (deepspeed/launcher/launch.py), named as tabular's `metrics.rank1.jsonl`."""
    folder = path.parent
    if path.name in ELASTIC_LOG_NAMES and folder.name.isdigit() and _ATTEMPT.fullmatch(folder.parent.name):
        return int(folder.name)
    return rank_from_name(path.name)


def _metrics_elsewhere(path: Path) -> bool:
    """The reference trainer's train.log: its metrics.jsonl holds every point, so the log adds only its events."""
    folder = path.parent
    return path.name == "train.log" and (folder / "run.json").is_file() and (folder / "metrics.jsonl").is_file()


def _drop_repeats(frame: pd.DataFrame, seen: list[pd.DataFrame], rel: str, notes: list[Note]) -> pd.DataFrame:
    """Drop points an earlier file gave (build-nanogpt's log.txt and its stdout log both hold the losses); the same
    value from another rank (a loss reduced across ranks, in each rank's own log) is that rank's point."""
    if not seen:
        return frame
    earlier = pd.concat([_point_keys(f) for f in seen], ignore_index=True)
    earlier = earlier.drop_duplicates(["name", "step", "rank"], keep="last").rename(columns={"value": "earlier"})
    merged = _point_keys(frame).merge(earlier, on=["name", "step", "rank"], how="left", indicator=True)
    a, b = merged["value"].to_numpy(), merged["earlier"].to_numpy()
    both = (merged["_merge"] == "both").to_numpy()
    with np.errstate(invalid="ignore"):
        close = np.abs(a - b) <= np.maximum(_half_last_digit(a), _half_last_digit(b)) * (1 + DEDUPE_RTOL)
    same = both & (np.isclose(a, b, rtol=DEDUPE_RTOL, atol=0.0) | close | (np.isnan(a) & np.isnan(b)))
    if same.any():
        notes.append(Note(rel, "points also logged by an earlier file of the run were read once",
                          count=int(same.sum())))
        frame = frame[~same].reset_index(drop=True)
    return frame


def _point_keys(frame: pd.DataFrame) -> pd.DataFrame:
    keys = frame[["name", "step", "value"]].astype({"name": str})
    keys["rank"] = frame["rank"].to_numpy() if "rank" in frame else 0
    return keys


def _half_last_digit(values: np.ndarray) -> np.ndarray:
    """Half a unit of each value's last decimal as printed (5e-5 for 2.1234; 0 for 0 and for values with no short
    decimal form): a value printed to fewer decimals stands for any value that rounds to it."""
    half = np.zeros(len(values))
    scaled = np.abs(np.nan_to_num(values, nan=0.5, posinf=0.5, neginf=0.5))
    open_ = np.ones(len(values), dtype=bool)
    for decimals in range(MAX_PRINTED_DECIMALS + 1):
        hit = open_ & (scaled > 0) & (np.abs(scaled - np.round(scaled)) <= PRINTED_RTOL * scaled)
        half[hit] = 0.5 * 10.0 ** -decimals
        open_ &= ~hit
        scaled = scaled * 10.0
    return half


@dataclass
class FileResult:
    """What one text file gave: a frame in Ingested's shape (or None), events, notes and hparams."""

    frame: pd.DataFrame | None
    events: list[Event]
    notes: list[Note]
    hparams: list[tuple[str, Any, str, str]] = field(default_factory=list)


def read_file(path: Path, rel: str | None = None, events_only: bool = False, rank: int | None = None) -> FileResult:
    """Read one text log; `rank`: the rank of its lines that carry no rank tag. Raises InputError only when the file
    cannot be read at all."""
    rel = rel or path.name
    try:
        raw = _load(path)
    except OSError as exc:
        raise InputError(f"cannot read the log: {exc.strerror or exc}", path=path) from exc
    if not len(raw):
        return FileResult(None, [], [Note(rel, "empty file")])
    return _Scanner(raw, rel, markdown=path.suffix.lower() in MARKDOWN_SUFFIXES, events_only=events_only,
                    rank=rank).run()


def read_text(text: str | bytes, rel: str = "train.log", markdown: bool = False) -> FileResult:
    """Read log text held in memory (tests, and logs embedded in other files)."""
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if not raw:
        return FileResult(None, [], [Note(rel, "empty file")])
    return _Scanner(raw, rel, markdown=markdown).run()


def _load(path: Path):
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            return b""
        if size < CHUNK_BYTES:
            f.seek(0)
            return f.read()
        # large logs are mapped, not copied: Arrow and numpy read the pages in place
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _from_utf16(raw) -> bytes:
    """UTF-8 bytes of a text that starts with a UTF-16 byte order mark (PowerShell's `>` and Tee-Object write such
    logs); other bytes as they are."""
    if raw[:2] not in UTF16_BOMS:
        return raw
    data = bytes(raw)
    return data[:len(data) - len(data) % 2].decode("utf-16", errors="replace").encode("utf-8")


def _latin1_fallback(error: UnicodeDecodeError) -> tuple[str, int]:
    return error.object[error.start:error.end].decode("latin-1"), error.end


codecs.register_error("postmortem-latin1", _latin1_fallback)


class _Scanner:
    """Reads one file's bytes into points, anchors (lines that state their step) and events."""

    def __init__(self, raw, rel: str, markdown: bool = False, events_only: bool = False, rank: int | None = None):
        self.rel, self.events_only, self.notes = rel, events_only, []
        self.rank = rank  # the rank the file's path names (a per-rank log); lines with a rank tag keep their own
        self.buf = self._utf8(raw)
        self.starts = _line_starts(self.buf)
        self.n_lines = len(self.starts) - 1
        self.terminated = self.buf[len(self.buf) - 1:len(self.buf)] == b"\n"
        self.skip = np.zeros(self.n_lines, dtype=bool)  # lines not to read: prose, garbage, continuations
        self.redraw_tails: dict[int, str] = {}  # overlong lines of a redrawn progress bar: the text after the last \r
        self._mark_scope(markdown)
        # collected
        self.p_line: list[np.ndarray] = []
        self.p_step: list[np.ndarray] = []  # -1: take the step from the context
        self.p_ctx: list[np.ndarray] = []  # 0 own, else CONTEXT_CODES: the next / previous step line's step
        self.p_name: list[np.ndarray] = []
        self.p_value: list[np.ndarray] = []
        self.names: dict[str, int] = {}
        self.a_line: list[np.ndarray] = []
        self.a_step: list[np.ndarray] = []
        self.epoch_lines: list[tuple] = []  # _apply's arguments for lines of the "epoch" family, applied at the end
        self.table_heads: list[tuple[int, int, list[str]]] = []  # fastai: (line, columns, metric names) per header
        self.table_rows: list[tuple[_Plan, np.ndarray, dict[int, np.ndarray]]] = []  # fastai rows, named at the end
        self.line_rank: np.ndarray | None = None  # each line's rank tag (-1: none), once a line has one
        self.line_local: np.ndarray | None = None  # torchrun's local rank under srun's label (-1: none)
        self.line_global: np.ndarray | None = None  # PyTorch's `[rankN]` on such a line (-1: none)
        self.raw_events: list[tuple[int, int | None, str, str, dict]] = []  # line, own step, kind, text, data
        self.warnings = 0
        self.garbage = 0
        self.garbage_first = 0
        self.dicts_without_step = 0
        # Megatron lines printing `grad norm: 0.000`: (line, loss on it); judged for the whole file (_placeholder_norms)
        self.zero_norms: list[tuple[np.ndarray, np.ndarray]] = []
        self.fairseq = False
        self.truncated_drop = False

    # -- bytes and lines --
    def _utf8(self, raw):
        if raw[:2] in UTF16_BOMS:
            self.notes.append(Note(self.rel, "UTF-16 text (as Windows PowerShell writes it): read as such"))
            return _from_utf16(raw)
        if _valid_utf8(raw):
            return raw
        data = bytes(raw)
        replaced = data.decode("utf-8", errors="replace")
        if replaced.count("\ufffd") > LATIN1_MAX_BAD_CHARS:
            self.notes.append(Note(self.rel, "mostly not text: undecodable bytes replaced"))
            return replaced.encode("utf-8")
        self.notes.append(Note(self.rel, "not valid UTF-8: undecodable bytes read as Latin-1"))
        return data.decode("utf-8", errors="postmortem-latin1").encode("utf-8")

    def _mark_scope(self, markdown: bool) -> None:
        lengths = np.diff(self.starts)
        overlong = lengths > MAX_LINE_CHARS
        self.skip |= overlong
        if overlong.any():
            self._redraw_tails(np.flatnonzero(overlong))
            left = overlong.copy()
            left[list(self.redraw_tails)] = False
            if left.any():
                self.notes.append(Note(self.rel, f"lines longer than {MAX_LINE_CHARS} characters skipped",
                                       line=int(np.flatnonzero(left)[0]) + 1, count=int(left.sum())))
        head = bytes(self.buf[:SNIFF_BYTES]).decode("utf-8", errors="replace").split("\n")
        if markdown or sum(_is_fence(line) for line in head) >= 2:
            fences = self._fence_lines()
            inside = np.zeros(self.n_lines + 1, dtype=np.int64)
            np.add.at(inside, fences, 1)
            in_code = (np.cumsum(inside)[:-1] % 2 == 1)
            in_code[fences] = False
            self.skip |= ~in_code

    def _redraw_tails(self, lines: np.ndarray) -> None:
        """A progress bar redrawn with \r makes one physical line per epoch (Keras' verbose=1), of many MB in a long
        epoch: its last drawing, after the last \r, is what it says. One overlong line at most per MB of file."""
        for line in lines.tolist():
            start, end = int(self.starts[line]), int(self.starts[line + 1])
            tail = bytes(self.buf[max(start, end - MAX_LINE_CHARS):end])
            cr = tail.rstrip(b"\r\n").rfind(b"\r")
            if cr != -1:
                self.redraw_tails[line] = tail[cr + 1:].decode("utf-8", errors="replace")

    def _fence_lines(self) -> np.ndarray:
        buf = bytes(self.buf)
        positions = []
        for token in (b"```", b"~~~"):
            at = buf.find(token)
            while at != -1:
                positions.append(at)
                at = buf.find(token, at + 3)
        if not positions:
            return np.empty(0, dtype=np.int64)
        pos = np.asarray(positions, dtype=np.int64)
        line = np.searchsorted(self.starts, pos, side="right") - 1
        at_start = (pos - self.starts[line]) <= 3
        lines = np.unique(line[at_start])
        return np.array([i for i in lines if _is_fence(self._text(i))], dtype=np.int64)

    def _text(self, line: int) -> str:
        return bytes(self.buf[self.starts[line]:self.starts[line + 1]]).decode("utf-8", errors="replace")

    # -- the scan --
    def run(self) -> FileResult:
        if not self.n_lines:  # a byte order mark and nothing else
            self.notes.append(Note(self.rel, "empty file"))
            return self._finish()
        last = self.n_lines - 1
        for lo, hi in _chunks(self.starts, CHUNK_BYTES):
            self._scan_chunk(lo, hi)
        if self.garbage:
            self.notes.append(Note(self.rel, "lines with binary or control bytes skipped", line=self.garbage_first + 1,
                                   count=self.garbage))
        if not self.terminated and not self.skip[last]:
            self._parse_rows([last], truncated=True)
        for line, text in self.redraw_tails.items():
            self._parse_line(line, text, truncated=line == last and not self.terminated)
        return self._finish()

    def _scan_chunk(self, lo: int, hi: int) -> None:
        if not self.terminated and hi == self.n_lines:
            hi -= 1  # the unterminated last line is parsed on its own (its last number may be cut)
        if hi <= lo:
            return
        b0, b1 = int(self.starts[lo]), int(self.starts[hi])
        view = memoryview(self.buf)[b0:b1]
        chunk = _Chunk(view, self.starts[lo:hi + 1] - b0)
        garbage = chunk.garbage_lines()
        if garbage.size:
            if not self.garbage:
                self.garbage_first = int(garbage[0]) + lo
            self.garbage += int(garbage.size)
            self.skip[garbage + lo] = True
        rows = np.flatnonzero(~self.skip[lo:hi])
        if not rows.size:
            return
        codes = chunk.skeleton_codes(rows)
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        groups = []
        for a, b in zip([0, *bounds.tolist()], [*bounds.tolist(), len(order)]):
            members = order[a:b]
            text = chunk.text(int(rows[members[0]]))
            plan = plan_of(_NUM.sub(SLOT, text))
            if plan.useful:
                groups.append((plan, text, rows[members]))
        # wrapped Megatron lines first: their continuation lines must not be read as lines of their own
        for plan, text, member_rows in groups:
            if plan.family == "megatron_wrapped":
                self._join_wrapped(member_rows + lo)
        for plan, text, member_rows in groups:
            if plan.family == "megatron_wrapped":
                continue
            member_rows = member_rows[~self.skip[member_rows + lo]]
            if not member_rows.size:
                continue
            if len(member_rows) <= SMALL_GROUP or not plan.slots:
                self._parse_rows(member_rows + lo, chunk=chunk, lo=lo)
            else:
                self._extract_group(plan, text, chunk, member_rows, lo)

    def _extract_group(self, plan: _Plan, text: str, chunk: "_Chunk", rows: np.ndarray, lo: int) -> None:
        """The numbers of every line of one shape at once, located from the digits' positions (numpy)."""
        values, ok = chunk.numbers(text, plan.slots, rows)
        if not ok.all():
            self._parse_rows(rows[~ok] + lo, chunk=chunk, lo=lo)
            rows = rows[ok]
        if plan.key_slots and rows.size:  # keys with numbers (`accuracy/top1`): the sample's keys, or parsed alone
            numbers = _NUM.findall(text)
            same = np.ones(rows.size, dtype=bool)
            for slot in plan.key_slots:
                same &= values[slot] == float(numbers[slot])
            if not same.all():
                self._parse_rows(rows[~same] + lo, chunk=chunk, lo=lo)
                rows = rows[same]
                values = {k: v[same] for k, v in values.items()}
        if rows.size:
            self._apply(plan, rows + lo, values, chunk=chunk, lo=lo, sample=text)

    def _parse_rows(self, line_indices: Iterable[int], chunk: "_Chunk | None" = None, lo: int = 0,
                    truncated: bool = False) -> None:
        """The slow path: each line parsed on its own (small groups, misfits, the last line of a cut file)."""
        for line in line_indices:
            line = int(line)
            self._parse_line(line, chunk.text(line - lo) if chunk is not None else self._text(line), truncated)

    def _parse_line(self, line: int, text: str, truncated: bool = False) -> None:
        template, numbers = _template(text)
        plan = plan_of(template)
        if plan.family == "megatron_wrapped":
            self._join_wrapped(np.array([line]))
            return
        if not plan.useful:
            return
        values = {s: np.array([float(numbers[s])]) for s in plan.slots}
        if truncated and plan.ends_with_number and plan.n_slots:
            plan = self._without_last_number(plan)
        self._apply(plan, np.array([line]), values, texts=[text], sample=text)

    def _without_last_number(self, plan: _Plan) -> _Plan:
        last = plan.n_slots - 1

        def uses_last(f: _Field) -> bool:
            return f.slot == last or last in f.more or last in f.key_slots

        if plan.step_slot == last or any(uses_last(f) for f in plan.fields):
            self.truncated_drop = True
        if last in (plan.step_slot, plan.epoch_slot, plan.epoch_len_slot):
            return _NOTHING
        return replace(plan, fields=tuple(f for f in plan.fields if not uses_last(f)))

    def _join_wrapped(self, first_lines: np.ndarray) -> None:
        """A Megatron iteration line wrapped over several physical lines: join them and read it as one."""
        for first in first_lines:
            first = int(first)
            if self.skip[first]:
                continue
            text = self._text(first).rstrip("\r\n")
            used = []
            nxt = first + 1
            while len(used) < MAX_WRAP_LINES and nxt < self.n_lines and not text.rstrip().endswith("|"):
                more = self._text(nxt).rstrip("\r\n")
                if not more.strip() or _is_fence(more) or re.search(r"iteration\s+\d+\s*/", more):
                    break
                text += more  # joined without a space: a wrap may cut a word or a number in two
                used.append(nxt)
                nxt += 1
            self.skip[used] = True
            template, numbers = _template(text)
            complete = text.rstrip().endswith("|")
            plan = plan_of(template if complete else template + "|")  # a cut tail without a value is no field
            if plan.family != "megatron":
                continue
            if not complete and plan_of(template).ends_with_number:
                plan = self._without_last_number(replace(plan, n_slots=len(numbers)))
            if plan.slots and max(plan.slots) < len(numbers):
                values = {s: np.array([float(numbers[s])]) for s in plan.slots}
                self._apply(plan, np.array([first]), values, texts=[text])

    # -- turning parsed numbers into points, anchors, events --
    def _apply(self, plan: _Plan, line_idx: np.ndarray, values: dict[int, np.ndarray], chunk: "_Chunk | None" = None,
               lo: int = 0, texts: list[str] | None = None, sample: str | None = None) -> None:
        """`sample`: a line of the shape (every line's own text on the slow path), for numbers inside keys."""
        if plan.progress_slots is not None:  # a progress bar counts once finished
            done, total = plan.progress_slots
            finished = values[done] == values[total]
            if not finished.all():
                line_idx = line_idx[finished]
                values = {k: v[finished] for k, v in values.items()}
                texts = [t for t, f in zip(texts, finished) if f] if texts is not None else None
                if not len(line_idx):
                    return
        if plan.family == "fastai_row":
            self.table_rows.append((plan, line_idx, values))
            return
        if plan.family == "fastai_header":
            if texts is None:
                texts = [chunk.text(int(i) - lo) for i in line_idx] if chunk is not None else [sample] * len(line_idx)
            for line, body in zip(line_idx.tolist(), texts):
                names = _fastai_names(body.rstrip("\r\n").rpartition("\r")[2])
                self.table_heads.append((line, plan.n_columns, names))
            return
        if plan.family == "epoch":  # whether its epoch is a step depends on the whole file (see _EPOCH_HEAD)
            self.epoch_lines.append((plan, line_idx, values, chunk, lo, texts, sample))
            return
        n = len(line_idx)
        if plan.anchor:
            raw_step = _step_values(plan, values)
            good = np.isfinite(raw_step) & (raw_step >= 0) & (raw_step == np.floor(raw_step)) & (raw_step < 2**53)
            if not good.all():
                line_idx = line_idx[good]
                values = {k: v[good] for k, v in values.items()}
                texts = [t for t, g in zip(texts, good) if g] if texts is not None else None
                n = len(line_idx)
                if not n:
                    return
                raw_step = _step_values(plan, values)
            steps = raw_step.astype(np.int64)
            ctx = 0
            if plan.points or plan.header:  # a step line logging nothing (`Step 2: Create Text`) sets no context
                self.a_line.append(line_idx)
                self.a_step.append(steps)
        else:
            steps = np.full(n, -1, dtype=np.int64)
            ctx = CONTEXT_CODES[plan.context]
        if plan.rank_slot is not None:
            rank = values[plan.rank_slot]
            if self.line_rank is None:
                self.line_rank = np.full(self.n_lines, -1, dtype=np.int32)
            self.line_rank[line_idx] = np.where(np.isfinite(rank) & (rank >= 0) & (rank < MAX_RANK), rank, -1)
        for slot, attr in ((plan.local_rank_slot, "line_local"), (plan.global_rank_slot, "line_global")):
            if slot is not None:
                if getattr(self, attr) is None:
                    setattr(self, attr, np.full(self.n_lines, -1, dtype=np.int32))
                rank = values[slot]
                getattr(self, attr)[line_idx] = np.where(np.isfinite(rank) & (rank >= 0) & (rank < MAX_RANK), rank, -1)
        if plan.family == "fairseq":
            self.fairseq = True
        if plan.dict_without_step:
            self.dicts_without_step += n
        if not self.events_only:
            numbers = _NUM.findall(sample) if plan.key_slots and sample is not None else None
            for f in plan.fields:
                v = values[f.slot]
                for group in f.more:  # `1,234,567`: each further group of three digits
                    v = v * 1000.0 + values[group]
                if f.transform:
                    with np.errstate(divide="ignore", invalid="ignore"):
                        v = np.where(v > 0, (1000.0 if f.transform == "per_ms" else 1.0) / v, np.nan)
                name = f.name
                if f.key_slots:
                    if numbers is None:
                        continue
                    for slot in f.key_slots:
                        name = name.replace(SLOT, numbers[slot], 1)
                if plan.family == "megatron" and name == "grad_norm" and (v == 0).any():
                    loss = next((values[g.slot] for g in plan.fields if g.name == "loss"), np.full(n, np.nan))
                    self.zero_norms.append((line_idx[v == 0], loss[v == 0]))
                self._add_points(line_idx, steps, ctx, name, v)
            for name, constant in plan.constants:
                self._add_points(line_idx, steps, ctx, name, np.full(n, constant))
        if plan.family == "megatron":
            self._megatron_events(plan, line_idx, steps, values, chunk, lo, texts)
        if plan.event is not None:
            if texts is None:
                texts = [chunk.text(int(i) - lo) for i in line_idx]
            for line, step, text in zip(line_idx.tolist(), steps.tolist(), texts):
                self._add_event(plan.event, line, step if ctx == 0 else None, text)

    def _add_points(self, line_idx, steps, ctx, name, values) -> None:
        code = self.names.setdefault(name, len(self.names))
        self.p_line.append(line_idx)
        self.p_step.append(steps)
        self.p_ctx.append(np.full(len(line_idx), ctx, dtype=np.int8))
        self.p_name.append(np.full(len(line_idx), code, dtype=np.int32))
        self.p_value.append(np.asarray(values, dtype=np.float64))

    def _placeholder_norms(self, line, name, value) -> np.ndarray:
        """Rows to keep. Megatron-DeepSpeed under DeepSpeed gets no norm from the engine and may print `grad norm:
        0.000` on every line (bloom13b: through a 3x loss spike with the loss scale halving); a real gradient is not
        exactly zero on two lines whose losses differ, so such zeros are not read. A single zero (a norm under the
        print resolution) or zeros beside a loss that does not move either (a zero loss by design) are kept."""
        keep = np.ones(len(line), dtype=bool)
        if not self.zero_norms or "grad_norm" not in self.names:
            return keep
        lines = np.concatenate([z[0] for z in self.zero_norms])
        losses = np.concatenate([z[1] for z in self.zero_norms])
        if len(lines) < 2 or len(np.unique(losses[np.isfinite(losses)])) < 2:
            return keep
        keep = ~((name == self.names["grad_norm"]) & (value == 0) & np.isin(line, lines))
        self.notes.append(Note(self.rel, "`grad norm: 0.000` while the loss moves: the gradient norm was not computed "
                                         "(Megatron-DeepSpeed under DeepSpeed), not read as zero",
                               line=int(lines.min()) + 1, count=int((~keep).sum())))
        return keep

    def _megatron_events(self, plan, line_idx, steps, values, chunk, lo, texts) -> None:
        """Megatron counts skipped and NaN iterations per logging interval; a NaN loss is left out of its line."""
        for slot, kind in ((plan.skipped_slot, "skipped_step"), (plan.nan_slot, "nan")):
            if slot is None:
                continue
            hits = np.flatnonzero(values[slot] > 0)
            for i in hits.tolist():
                text = texts[i] if texts is not None else chunk.text(int(line_idx[i]) - lo)
                data = {"count": int(values[slot][i])}
                if kind == "nan":
                    data["metric"] = "loss"
                self._add_event(kind, int(line_idx[i]), int(steps[i]), text, data)
            if kind == "nan" and hits.size and not plan.has_loss and not self.events_only:
                # no `lm loss` on a line that counts NaN iterations: the loss was NaN. Recording it as a NaN point
                # is the faithful reading (the NaN is the evidence), not a made-up number.
                self._add_points(line_idx[hits], steps[hits], 0, "loss", np.full(hits.size, np.nan))

    def _add_event(self, kind: str, line: int, step: int | None, text: str, data: dict | None = None) -> None:
        if kind == "warning":
            self.warnings += 1
            if self.warnings > MAX_WARNING_EVENTS:
                return
        text = text.rstrip("\r\n").rpartition("\r")[2].strip()  # a progress bar's earlier drawings are not the event
        parsed, own_step = _event_data(kind, text)
        if data:
            parsed.update(data)
        if own_step is not None:
            step = own_step
        if len(text) > EVENT_TEXT_CHARS:
            text = text[:EVENT_TEXT_CHARS] + "..."
        self.raw_events.append((line, step, kind, text, parsed))

    # -- steps from context, the frame, the events --
    def _finish(self) -> FileResult:
        has_steps = bool(self.a_line)
        if self.table_rows:
            if has_steps:
                self.notes.append(Note(self.rel, "per-epoch table rows (fastai) not read: the file logs steps",
                                       line=int(min(rows.min() for _, rows, _ in self.table_rows)) + 1,
                                       count=sum(len(rows) for _, rows, _ in self.table_rows)))
            else:
                self._table_points()
        if self.epoch_lines:
            if has_steps:
                self.notes.append(Note(self.rel, "per-epoch summary lines not read: the file logs steps",
                                       line=int(min(group[1].min() for group in self.epoch_lines)) + 1,
                                       count=sum(len(group[1]) for group in self.epoch_lines)))
            else:
                for plan, *rest in self.epoch_lines:
                    self._apply(replace(plan, family="epoch_steps"), *rest)
        a_line, a_step = _concat(self.a_line, np.int64), _concat(self.a_step, np.int64)
        order = np.argsort(a_line, kind="stable")
        a_line, a_step = a_line[order], a_step[order]
        if self.line_local is not None:
            self.line_rank = _process_ranks(self.line_rank, self.line_local, self.line_global)
        ranked = _LineRanks(self.line_rank, a_line) if self.line_rank is not None else None

        events = self._events(a_line, a_step, ranked)
        frame = None
        have_points = bool(self.p_line)
        if have_points:
            line, step, ctx, name, value = (_take_all(parts) for parts in (
                self.p_line, self.p_step, self.p_ctx, self.p_name, self.p_value))
            keep = self._placeholder_norms(line, name, value)
            if not keep.all():
                line, step, ctx, name, value = line[keep], step[keep], ctx[keep], name[keep], value[keep]
        notes = list(self.notes)
        if have_points:
            needs = ctx > 0
            if needs.any():
                step[needs] = _context_steps(line[needs], ctx[needs], a_line, a_step, ranked)
                missing = step < 0
                later = step == SECOND_AFTER
                if later.any():
                    notes.append(Note(self.rel, "progress bars after an epoch's own (model.evaluate after fit) not "
                                                "read", line=int(line[later].min()) + 1,
                                      count=int(np.unique(line[later]).size)))
                if (missing & ~later).any():
                    notes.append(Note(self.rel, "values on lines with no step line before or after them not read",
                                      line=int(line[missing & ~later][0]) + 1, count=int((missing & ~later).sum())))
                if missing.any():
                    keep = ~missing
                    line, step, name, value = line[keep], step[keep], name[keep], value[keep]
            del ctx
            if len(line) > 1 and (np.diff(line) < 0).any():  # groups were read shape by shape: back to file order
                order = np.argsort(line, kind="stable")
                line, step, name, value = line[order], step[order], name[order], value[order]
                del order
            names = pd.Categorical.from_codes(name, categories=list(self.names))
            del name
            rank = self._rank_column(line, ranked)
            line += 1
            frame = pd.DataFrame({"step": step, "name": names, "value": value, "line": line}, copy=False)
            if rank is not None:
                frame["rank"] = rank
        if self.truncated_drop:
            notes.append(Note(self.rel, "the last line has no line end (cut mid-write?); its last number not read",
                              line=self.n_lines))
        if self.warnings > MAX_WARNING_EVENTS:
            notes.append(Note(self.rel, f"warning lines beyond the first {MAX_WARNING_EVENTS} not kept as events",
                              count=self.warnings - MAX_WARNING_EVENTS))
        if self.dicts_without_step:
            notes.append(Note(self.rel, "metric dicts without a step not read (HF Trainer prints its log dicts "
                                        "without one; trainer_state.json holds them)", count=self.dicts_without_step))
        hparams = [("loss_base", 2, self.rel, "fairseq logs its loss in base 2 (ppl = 2**loss)")] if self.fairseq \
            else []
        return FileResult(frame, events, notes, hparams)

    def _table_points(self) -> None:
        """fastai table rows as points: named by the header above each, the epoch (continued across tables) as the
        step. A row with no header above it, or with another number of columns, is not read."""
        heads = sorted(self.table_heads)
        head_line = np.array([h[0] for h in heads], dtype=np.int64)
        head_columns = np.array([h[1] for h in heads], dtype=np.int64)
        rows = [(plan, line, values, np.searchsorted(head_line, line, side="right") - 1)
                for plan, line, values in self.table_rows]
        kept, unread = [], 0
        for plan, line, values, table in rows:
            ok = np.zeros(len(line), dtype=bool)
            if heads:
                ok = (table >= 0) & (head_columns[np.maximum(table, 0)] == plan.n_columns)
            unread += int((~ok).sum())
            epoch = values[plan.epoch_slot]
            ok &= np.isfinite(epoch) & (epoch >= 0) & (epoch == np.floor(epoch))
            if ok.any():
                kept.append((plan, line[ok], {k: v[ok] for k, v in values.items()}, table[ok]))
        if unread:
            self.notes.append(Note(self.rel, "table rows without a header of as many columns above them not read",
                                   count=unread))
        if not kept:
            return
        table = np.concatenate([k[3] for k in kept])
        epoch = np.concatenate([k[2][k[0].epoch_slot] for k in kept]).astype(np.int64)
        offsets = np.zeros(len(heads), dtype=np.int64)
        last = -1
        for t in range(len(heads)):  # one per fit() call: a few
            mine = epoch[table == t]
            if len(mine):
                offsets[t] = max(0, last + 1 - int(mine.min()))
                last = int(mine.max()) + offsets[t]
        for plan, line, values, table in kept:
            steps = values[plan.epoch_slot].astype(np.int64) + offsets[table]
            self.a_line.append(line)
            self.a_step.append(steps)
            for t in np.unique(table).tolist():  # a few tables
                mine = table == t
                names = heads[t][2]
                for f in plan.fields:
                    self._add_points(line[mine], steps[mine], 0, names[int(f.name) - 1], values[f.slot][mine])
                for column, constant in plan.constants:
                    self._add_points(line[mine], steps[mine], 0, names[int(column) - 1],
                                     np.full(int(mine.sum()), constant))

    def _rank_column(self, lines: np.ndarray, ranked: "_LineRanks | None") -> np.ndarray | None:
        """Each line's rank: its tag's, else the one its path names, else the lowest rank whose step lines are tagged
        (a line quoted without its tag, in an excerpt, is the trainer's), else 0. None for a file without ranks."""
        if ranked is None and self.rank is None:
            return None
        rank = ranked.of(lines) if ranked is not None else np.full(len(lines), -1, dtype=np.int64)
        default = self.rank
        if default is None:
            tagged = ranked.anchor_rank[ranked.anchor_rank >= 0]
            default = int(tagged.min()) if len(tagged) else 0
        rank[rank < 0] = default
        return rank

    def _events(self, a_line: np.ndarray, a_step: np.ndarray, ranked: "_LineRanks | None") -> list[Event]:
        if not self.raw_events:
            return []
        raw = sorted(self.raw_events, key=lambda e: e[0])
        lines = np.array([e[0] for e in raw], dtype=np.int64)
        ctx_steps = _context_steps(lines, np.ones(len(raw), dtype=np.int8), a_line, a_step, ranked)
        if ranked is not None or self.rank is not None:  # an event keeps the rank of the process that wrote it
            ranks = ranked.of(lines) if ranked is not None else np.full(len(raw), -1, dtype=np.int64)
            if self.rank is not None:
                ranks[ranks < 0] = self.rank
            for (_, _, _, _, data), rank in zip(raw, ranks.tolist()):
                if rank >= 0:
                    data["rank"] = rank
        scale_line, scale_value = self._loss_scale_points()
        events, overflow_points = [], []
        last_scale: tuple[int, float] | None = None  # (line, scale) of the previous overflow event
        for (line, own, kind, text, data), ctx_step in zip(raw, ctx_steps.tolist()):
            step = own if own is not None else (ctx_step if ctx_step >= 0 else None)
            if kind == "overflow" and "scale_to" in data:
                if "scale_from" not in data:  # fairseq and apex name only the new scale: the old one is the last seen
                    known = [last_scale] if last_scale is not None else []
                    at = int(np.searchsorted(scale_line, line)) - 1
                    if at >= 0:
                        known.append((int(scale_line[at]), float(scale_value[at])))
                    if known:
                        data["scale_from"] = max(known)[1]
                last_scale = (line, data["scale_to"])
                if step is not None:
                    overflow_points.append((line, step, data["scale_to"]))
            events.append(Event(kind, step, text, self.rel, line + 1, data))
        if overflow_points and not self.events_only:
            self._add_points(np.array([p[0] for p in overflow_points], dtype=np.int64),
                             np.array([p[1] for p in overflow_points], dtype=np.int64), 0, "loss_scale",
                             np.array([p[2] for p in overflow_points], dtype=np.float64))
        return events

    def _loss_scale_points(self) -> tuple[np.ndarray, np.ndarray]:
        code = self.names.get("loss_scale")
        pieces = [k for k, names in enumerate(self.p_name) if code is not None and len(names) and names[0] == code]
        if not pieces:
            return np.empty(0, dtype=np.int64), np.empty(0)
        line = np.concatenate([self.p_line[k] for k in pieces])
        value = np.concatenate([self.p_value[k] for k in pieces])
        order = np.argsort(line, kind="stable")
        return line[order], value[order]


# --- vectorised helpers -----------------------------------------------------------------------------------------------

_OTHER, _DIGIT, _CONTROL = 0, 1, 2
_BYTE_CLASS = np.zeros(256, dtype=np.uint8)
_BYTE_CLASS[np.frombuffer(b"0123456789", dtype=np.uint8)] = _DIGIT
_BYTE_CLASS[[b for b in range(32) if b not in b"\t\n\r\x08\x0c\x1b"] + [127]] = _CONTROL  # NUL, BEL, ...: not
# text. A backspace is: Keras' progress bar erases its last drawing with them before each "\r" (Progbar.update)
_DIGITS = re.compile(r"[0-9]+")


def _valid_utf8(raw) -> bool:
    array = pa.LargeStringArray.from_buffers(1, pa.py_buffer(np.array([0, len(raw)], dtype=np.int64)),
                                            pa.py_buffer(raw))
    try:
        array.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _line_starts(buf) -> np.ndarray:
    """Byte offset of each line's start, plus the end of the buffer: n_lines + 1 entries."""
    size = len(buf)
    parts = [np.zeros(1, dtype=np.int64)]
    for lo in range(0, size, CHUNK_BYTES):
        arr = np.frombuffer(buf, dtype=np.uint8, count=min(CHUNK_BYTES, size - lo), offset=lo)
        parts.append(np.flatnonzero(arr == 10).astype(np.int64) + lo + 1)
    starts = np.concatenate(parts)
    if starts[-1] != size:
        starts = np.append(starts, size)
    return starts


def _chunks(starts: np.ndarray, size: int) -> Iterable[tuple[int, int]]:
    """Line ranges of about `size` bytes each."""
    n = len(starts) - 1
    lo = 0
    while lo < n:
        hi = int(np.searchsorted(starts, starts[lo] + size, side="right")) - 1
        hi = min(max(hi, lo + 1), n)
        yield lo, hi
        lo = hi


class _Chunk:
    """A block of whole lines: where the digits are, each line's skeleton, and numbers pulled out by position."""

    def __init__(self, view: memoryview, offsets: np.ndarray):
        self.view, self.offsets = view, offsets  # offsets: each line's first byte, plus the block's end
        self.n = len(offsets) - 1
        self.arr = np.frombuffer(view, dtype=np.uint8)
        self.digit = (self.arr - np.uint8(48)) < np.uint8(10)
        edges = np.flatnonzero(np.diff(self.digit.view(np.int8), prepend=np.int8(0), append=np.int8(0)))
        self.run_start, self.run_end = edges[0::2], edges[1::2]  # digit runs: maximal runs of ASCII digits
        self.first_run = np.searchsorted(self.run_start, offsets)  # runs of line i: first_run[i]:first_run[i+1]
        self.runs_per_line = np.diff(self.first_run)
        self.digits_before = np.concatenate(([0], np.cumsum(self.run_end - self.run_start)))

    def text(self, row: int) -> str:
        return bytes(self.view[self.offsets[row]:self.offsets[row + 1]]).decode("utf-8", errors="replace")

    def garbage_lines(self) -> np.ndarray:
        low = np.flatnonzero(self.arr < 32)  # mostly line ends and tabs: few
        bad = low[_BYTE_CLASS[self.arr[low]] == _CONTROL]
        if not bad.size:
            return bad
        return np.unique(np.searchsorted(self.offsets, bad, side="right") - 1)

    def skeleton_codes(self, rows: np.ndarray) -> np.ndarray:
        """One code per row: rows share it when they are the same text with other digits (each run of digits is
        kept as one `0`, so equal skeletons have their numbers in the same places)."""
        keep = ~self.digit
        keep[self.run_start] = True
        kept = self.arr[keep]
        runs = np.arange(len(self.run_start))
        kept[self.run_start - self.digits_before[:-1] + runs] = 48  # b"0"
        dropped = self.digits_before[self.first_run] - self.first_run
        skeletons = pa.LargeStringArray.from_buffers(self.n, pa.py_buffer(self.offsets - dropped), pa.py_buffer(kept))
        if len(rows) < self.n:
            skeletons = skeletons.take(pa.array(rows))
        encoded = pc.dictionary_encode(skeletons)
        return encoded.indices.to_numpy(zero_copy_only=False)

    def numbers(self, text: str, slots: tuple[int, ...], rows: np.ndarray) -> tuple[dict[int, np.ndarray], np.ndarray]:
        """The numbers at `slots` of every row with the skeleton of `text`, and which rows have its shape (all)."""
        runs = [(m.start(), m.end()) for m in _DIGITS.finditer(text)]
        tokens = [(m.start(), m.end()) for m in _NUM.finditer(text)]
        # each wanted number: its first and last digit run, and the sign/point bytes around them
        where = {}
        for slot in slots:
            start, end = tokens[slot]
            inside = [k for k, (a, b) in enumerate(runs) if a >= start and b <= end]
            where[slot] = (inside[0], inside[-1], runs[inside[0]][0] - start, end - runs[inside[-1]][1])
        ok = self.runs_per_line[rows] == len(runs)  # true by construction of the skeleton; a cheap guard
        base = self.first_run[rows[ok]]
        values = {}
        for slot, (first, last, lead, trail) in where.items():
            values[slot] = self._floats(self.run_start[base + first] - lead, self.run_end[base + last] + trail)
        return values, ok

    def _floats(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Cast byte spans of the block (ascending, not overlapping) to float64 in one Arrow call."""
        if not len(starts):
            return np.empty(0)
        bounds = np.empty(2 * len(starts), dtype=np.int64)
        bounds[0::2], bounds[1::2] = starts, ends
        spans = pa.LargeStringArray.from_buffers(len(bounds) - 1, pa.py_buffer(bounds), pa.py_buffer(self.view))
        tokens = spans.take(pa.array(np.arange(0, len(bounds) - 1, 2)))
        try:
            return pc.cast(tokens, pa.float64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:  # a span that is no number after all: that row alone becomes NaN
            return np.array([_float_or_nan(t) for t in tokens.to_pylist()])


def _step_values(plan: _Plan, values: dict[int, np.ndarray]) -> np.ndarray:
    """The step of each line: its step number, or (epoch - first epoch) * epoch length + iteration in the epoch, plus
    offset."""
    step = values[plan.step_slot]
    if plan.epoch_len_slot is not None:
        step = (values[plan.epoch_slot] - plan.epoch_base) * values[plan.epoch_len_slot] + step
    return step + plan.step_offset if plan.step_offset else step


def _float_or_nan(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _context_steps(lines: np.ndarray, ctx: np.ndarray, a_line: np.ndarray, a_step: np.ndarray,
                   ranked: "_LineRanks | None" = None) -> np.ndarray:
    """Steps of lines that state none: the next step line's (ctx 1; else the previous one's, ctx 3: its step + 1),
    or the previous one's (ctx 2); -1 if none. With ranks, a line of a rank that prints step lines of its own takes
    them (ranks print their steps interleaved); a line without a rank, or of a rank without step lines (a crash
    message of another process), takes the nearest step line of any rank."""
    out = _nearest_steps(lines, ctx, a_line, a_step)
    if ranked is None or not len(lines):
        return out
    line_rank = ranked.of(lines)
    for rank in np.unique(ranked.anchor_rank[ranked.anchor_rank >= 0]).tolist():  # a few ranks: not a loop per line
        mine = line_rank == rank
        if mine.any():
            own = ranked.anchor_rank == rank
            out[mine] = _nearest_steps(lines[mine], ctx[mine], a_line[own], a_step[own])
    return out


def _nearest_steps(lines: np.ndarray, ctx: np.ndarray, a_line: np.ndarray, a_step: np.ndarray) -> np.ndarray:
    out = np.full(len(lines), -1, dtype=np.int64)
    if not len(a_line):
        return out
    at = np.searchsorted(a_line, lines, side="right")
    has_next = at < len(a_line)
    has_prev = at > 0
    nxt = np.where(has_next, a_step[np.minimum(at, len(a_line) - 1)], -1)
    prev = np.where(has_prev, a_step[np.maximum(at - 1, 0)], -1)
    after_last = np.where((ctx == 3) & has_prev, prev + 1, prev)
    out = np.where((ctx == 1) | (ctx == 3), np.where(has_next, nxt, after_last), prev)
    first_after = (ctx == 4) & has_prev
    if first_after.any():  # only the first line after its step line takes that step
        first = np.full(len(a_line) + 1, np.iinfo(np.int64).max)
        np.minimum.at(first, at[first_after], lines[first_after])
        out[first_after & (lines != first[at])] = SECOND_AFTER
    return out.astype(np.int64)


def _process_ranks(task: np.ndarray, local: np.ndarray, global_rank: np.ndarray | None) -> np.ndarray:
    """Each line's process under srun --label over torchrun (see _SRUN_TORCHRUN): first rank of its task + local
    rank, the task's first rank read from PyTorch's `[rankN]` tag (global rank - local rank) on a line of that task,
    else task * width; -1 for lines with srun's label alone (an agent's)."""
    both = (local >= 0) & (task >= 0)
    width = int(local[both].max()) + 1 if both.any() else 1
    rank = np.where(both, task.astype(np.int64) * width + local, -1)
    named = both & (global_rank >= 0) if global_rank is not None else None
    if named is None or not named.any():
        return rank
    tasks, first = np.unique(task[named], return_index=True)  # a few tasks: one per node
    bases = (global_rank[named] - local[named])[first].astype(np.int64)
    at = np.minimum(np.searchsorted(tasks, task), len(tasks) - 1)
    known = both & (tasks[at] == task)
    return np.where(known, bases[at] + local, rank)


class _LineRanks:
    """The rank tag of each line of a file (-1: none, or a tag that names no rank), and of each step line."""

    def __init__(self, line_rank: np.ndarray, a_line: np.ndarray):
        self.line_rank = line_rank
        self.anchor_rank = self.of(a_line)

    def of(self, lines: np.ndarray) -> np.ndarray:
        return self.line_rank[lines].astype(np.int64)


def _take_all(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate and empty the list, so its pieces are freed as the whole is built."""
    whole = np.concatenate(parts)
    parts.clear()
    return whole


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype=dtype)

