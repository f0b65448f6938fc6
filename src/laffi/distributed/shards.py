"""Answer questions on several processes at once, gathered back in question order.

    accelerate launch --config_file configs/accelerate/multi-gpu.yaml -m laffi.cli evaluate RUN --system base
    torchrun --nproc_per_node 8 -m laffi.cli evaluate RUN --system base

Each process loads the model on its own GPU and answers every N-th question of a round; the main
process gathers the round's records and appends them in question order, then the next round
starts, so a crash loses at most one round and a rerun continues from the file. Only the main
process writes. Started without a launcher, `Shard.current()` is one process and every method
does what the single-process code did: open the writer, call `answer_questions`. Training uses
`Shard.on_main` too, for the one file it writes before the processes have anything to share.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object

from laffi.distributed.launch import launched_processes
from laffi.models import pick_device
from laffi.records import Key, RecordWriter, read_records, record_key

ROUND_BATCHES = 4  # batches per process per round: fewer pauses to gather, less lost to a crash


@dataclass
class Collector:
    """Stands in for a RecordWriter: keeps one process's records of a round for the gather."""

    done_keys: set[Key] = field(default_factory=set)  # as RecordWriter's: record_key of the records done
    records: list = field(default_factory=list)

    @property
    def done_ids(self) -> set[str]:
        return {question_id for question_id, _ in self.done_keys}

    def write(self, records) -> None:
        self.records.extend(records)


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    processes: int = 1

    @classmethod
    def current(cls, device: str = "auto") -> "Shard":
        """This process's place among those a launcher started (WORLD_SIZE), or the only one.
        `device` is model.device: on CPU the processes meet over gloo."""
        if launched_processes() == 1:
            return cls()
        # joins the process group, and makes this process's GPU the one "cuda" means
        state = PartialState(cpu=pick_device(device).type == "cpu")
        return cls(state.process_index, state.num_processes)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _share(self, value: Any) -> Any:
        return broadcast_object_list([value])[0]

    def on_main(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the main process; if it raises, every process raises it."""
        error = None
        if self.is_main:
            try:
                fn()
            except Exception as exc:  # handed to every process and raised there
                error = exc
        if self.processes > 1:
            error = self._share(error)
        if error is not None:
            raise error

    @contextmanager
    def writer(self, path: Path, cls: type) -> Iterator[Any]:
        """The main process's RecordWriter; elsewhere a Collector that knows which ids are done."""
        if self.processes == 1:
            with RecordWriter(path, cls) as writer:
                yield writer
            return
        if self.is_main:
            with RecordWriter(path, cls) as writer:  # drops a torn last line before the others read
                self._share(None)
                yield writer
        else:
            self._share(None)
            yield Collector({record_key(r) for r in read_records(path, cls)} if path.exists() else set())

    def answer(self, answer_questions: Callable[..., dict], model, tokenizer, examples: list, shots: list, data,
               config, writer, make_record: Callable, desc: str, samples: int = 1) -> dict:
        """`answer_questions` over all processes, `samples` answers per question (K > 1: the generate stage's
        training answers), each process a share of the questions of a round; the records are gathered by
        record key and written in question order. Returns its speed stats for the whole of them."""
        more = {"samples": samples} if samples > 1 else {}  # an evaluation's answerer may take no samples
        if self.processes == 1:
            return answer_questions(model, tokenizer, examples, shots, data, config, writer, make_record, desc=desc,
                                    **more)
        # the same list on every process: the questions with an answer still to make
        todo = [e for e in examples if any((e.id, sample) not in writer.done_keys for sample in range(samples))]
        size = self.processes * config.batch_size * ROUND_BATCHES
        started, prompt_tokens, new_tokens = time.perf_counter(), 0, 0
        for start in range(0, len(todo), size):
            round_ = todo[start:start + size]
            mine = Collector(set(writer.done_keys))  # a question's samples already on disk are not made again
            error, speed = None, {"prompt_tokens": 0, "new_tokens": 0}
            try:
                speed = answer_questions(model, tokenizer, round_[self.rank::self.processes], shots, data, config,
                                         mine, make_record, desc=f"{desc} [{start + len(round_)}/{len(todo)}]", **more)
            except Exception as exc:  # the others wait at the gather: meet them there, with what did arrive
                error = exc
            parts = gather_object([(mine.records, speed["prompt_tokens"], speed["new_tokens"],
                                    None if error is None else f"{type(error).__name__}: {error}")])
            prompt_tokens += sum(p for _, p, _, _ in parts)
            new_tokens += sum(n for _, _, n, _ in parts)
            if self.is_main:  # what arrived is kept, also when a process failed: a rerun asks only for the rest
                made = {record_key(record): record for records, _, _, _ in parts for record in records}
                writer.write(made[(e.id, sample)] for e in round_ for sample in range(samples)
                             if (e.id, sample) in made)
            failed = [(rank, text) for rank, (*_, text) in enumerate(parts) if text]
            if error is not None:
                raise error
            if failed:
                raise RuntimeError(f"process {failed[0][0]} failed while answering ({failed[0][1]}); what the "
                                   "processes had answered is written")
        self._share(None)  # the others read the file only after the main process has written it all
        elapsed = time.perf_counter() - started
        return {"questions": len(todo), "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
                "seconds": round(elapsed, 2), "processes": self.processes,
                "new_tokens_per_s": round(new_tokens / elapsed, 2) if todo else None}
