"""The DPO term of a recipe with train.preference, as laffi's training loop runs it (laffi.stages.train).

    term = PreferenceTerm.of(preference, examples, pairs)    # pairs: sets/SYSTEM.pairs.jsonl
    rows += tokenize(tokenizer, term.pair_examples, max_seq_len)
    batches = [term.with_pairs(batch) for batch in batches]  # a question's pair joins its example's batch
    term.reference = term.compute_reference(...)              # once, before step 1: the model at step 0
    loss, stats = term.part_loss(model, rows, part, weights, pair_weight, pad_id, device, packed)

Every step trains on train.batch_size questions' own examples (their NLL, a mean over their completion
tokens, exactly the sft set's loss) and on the pairs of the same questions: question q's gold answer
(chosen) over the model's own answer that the annotator judged incorrect or partially correct (rejected);
with several answers per question (generate.samples) a question can have several pairs, and all of them
join the batch of the question's first own example.
Per pair, DPO's loss (TRL's DPOTrainer, loss_type "sigmoid"):

    -log sigmoid(beta x ((log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))))

log pi: a completion's log-probability summed over its tokens (DPO's and TRL's convention; with
`length_normalized`, divided by its tokens); ref: the model the training starts from, frozen at step 0 (the
base model for a new LoRA; the adapter it continues for train.init and for every round of train.rounds
after the first, as Iterative RPO takes each iteration's reference). The step's loss is the NLL plus
`weight` x the mean of the pairs' losses; a step whose questions have no pair has no DPO term.

With `loss: kto` (laffi.systems.Preference) the term's rows are single labelled answers
(sets/SYSTEM.labelled.jsonl: each distinct own answer of a question, desirable where judged correct), which
join their question's batch as a pair does, and each one's loss is KTO's with the reference point at 0:
desirable_weight x (1 - sigmoid(r)) for a desirable answer, 1 - sigmoid(-r) otherwise, r = beta x (log pi -
log ref); the step's term is `weight` x their mean, and at step 1 every one is 0.5 (x its weight).

The reference log-probs are computed once before training, with the adapter on as it is at step 0, in the
rows the training will run (the same packed parts, autocast and tree attention: a part's layout decides
its rounding), keyed by the part, so at step 1 every policy/reference log-ratio is exactly 0 and every
pair's loss log 2. For a new LoRA that reference is the base model's to the bit: LoRA's B is zero, and
adding its exact zeros to a layer's output changes no bit (the same as switching the adapter off, which is
what this code did before train.rounds). They are saved beside the checkpoint
(adapters/SYSTEM/reference_logps.json): a resumed training reads them back, never recomputes them on
another device or kernel, nor from the weights of a later step.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from laffi.records import LabelledAnswer, PreferencePair, TrainingExample, write_json
from laffi.stages.batches import Row, completion_tokens, sequence_logps, unwrapped
from laffi.systems import Preference
from laffi.tree_attention import kernels_as_in_training

Part = tuple[int, ...]  # the row indices of one forward pass, in the order it runs them


def dpo_losses(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
               ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair's DPO loss and its reward margin, beta x the difference of the two log-ratios."""
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -torch.nn.functional.logsigmoid(margin), margin


def checked_rows(examples: list[TrainingExample], records: list[PreferencePair] | list[LabelledAnswer],
                 source: Path | str) -> dict[str, int]:
    """`first_rows` of a set, after checking that it holds every question of a preference term's records."""
    row_of = first_rows(examples)
    if unknown := [r.id for r in records if r.id not in row_of]:
        raise ValueError(f"{source}: records of questions the training set does not hold ({unknown[:3]}); "
                         "run `laffi build` again")
    return row_of


def first_rows(examples: list[TrainingExample]) -> dict[str, int]:
    """Each question's first row in a set: the example its other rows (auxiliary examples, pairs) join."""
    rows: dict[str, int] = {}
    for i, example in enumerate(examples):
        rows.setdefault(example.id, i)
    return rows


def kto_losses(policy: torch.Tensor, ref: torch.Tensor, desirable: torch.Tensor, beta: float,
               desirable_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each labelled answer's KTO loss with the reference point at 0 (laffi.systems.Preference.loss) and its
    signed reward: r = beta x (log pi - log ref), positive where the answer moved the way its label asks."""
    sign = desirable.to(policy.dtype) * 2 - 1
    reward = sign * beta * (policy - ref)
    weights = torch.where(desirable, desirable_weight, 1.0).to(policy.dtype)
    return weights * (1 - torch.sigmoid(reward)), reward


@dataclass
class PreferenceTerm:
    preference: Preference
    # rows 0..examples-1 are the own examples; then the term's groups of rows, each `size` rows: a DPO pair
    # (group k's chosen row is examples + 2k, its rejected row the next) or one labelled answer (kto)
    examples: int
    questions: list[int]  # group k's own example row: the first of its question's
    pair_examples: list[TrainingExample]  # the group rows to tokenize, group by group
    reference: dict[Part, dict[int, float]] = field(default_factory=dict)  # per part: each group row's ref log-prob
    desirable: list[bool] = field(default_factory=list)  # kto: group k's label
    desirable_weight: float = 1.0  # kto: lambda_D as this set makes it (Preference.desirable_weight)

    @property
    def size(self) -> int:
        return 1 if self.preference.loss == "kto" else 2

    @classmethod
    def of(cls, preference: Preference, examples: list[TrainingExample], pairs: list[PreferencePair],
           source: Path | str = "the pairs") -> PreferenceTerm:
        row_of = checked_rows(examples, pairs, source)
        rows = [TrainingExample(p.id, p.prompt, completion) for p in pairs for completion in (p.chosen, p.rejected)]
        return cls(preference, len(examples), [row_of[p.id] for p in pairs], rows)

    @classmethod
    def labelled(cls, preference: Preference, examples: list[TrainingExample], answers: list[LabelledAnswer],
                 source: Path | str = "the labelled answers") -> PreferenceTerm:
        row_of = checked_rows(examples, answers, source)
        desirable = [a.desirable for a in answers]
        good, bad = sum(desirable), len(desirable) - sum(desirable)
        lambda_d = preference.desirable_weight or (bad / good if good and bad else 1.0)
        rows = [TrainingExample(a.id, a.prompt, a.completion, a.sample) for a in answers]
        return cls(preference, len(examples), [row_of[a.id] for a in answers], rows, desirable=desirable,
                   desirable_weight=lambda_d)

    def describe(self, questions: int) -> str:
        p = self.preference
        if self.size == 1:
            return (f"{len(self.questions)} labelled answers ({sum(self.desirable)} desirable, weight "
                    f"{self.desirable_weight:.3g}) on {len(set(self.questions))} of its {questions} questions (KTO, "
                    f"weight {p.weight:g}, beta {p.beta:g})")
        return (f"{len(self.questions)} DPO pairs on {len(set(self.questions))} of its {questions} questions "
                f"(weight {p.weight:g}, beta {p.beta:g})")

    def summary(self) -> dict:
        """What summary.json records of the term: its pairs or labelled answers and its settings."""
        if self.size == 1:
            return {"labelled": len(self.questions), **asdict(self.preference), "desirable": sum(self.desirable),
                    "desirable_weight": self.desirable_weight}
        return {"pairs": len(self.questions), **asdict(self.preference)}

    def with_pairs(self, batch: list[int]) -> list[int]:
        """A batch of own examples with the group rows of its questions."""
        groups_of: dict[int, list[int]] = {}
        for k, question in enumerate(self.questions):
            groups_of.setdefault(question, []).append(k)
        return [*batch, *(self.examples + self.size * k + side for i in batch for k in groups_of.get(i, ())
                          for side in range(self.size))]

    def units(self, picked: list[int]) -> list[int]:
        """The question of each row: a packed part is cut between questions only, never inside a pair."""
        return [i if i < self.examples else self.questions[(i - self.examples) // self.size] for i in picked]

    def pair_rows(self, part: list[int] | Part) -> list[int]:
        return [i for i in part if i >= self.examples]

    def step_weights(self, rows: list[Row], window: list[list[int]]) -> tuple[dict[int, float], float]:
        """Each own row's NLL weight, 1 / the step's own completion tokens (the sft set's token mean), and
        each group's weight, `weight` / the step's groups (pairs, or labelled answers)."""
        own = [i for batch in window for i in batch if i < self.examples]
        tokens = sum(completion_tokens(rows[i]) for i in own)
        groups = sum(len(self.pair_rows(batch)) for batch in window) // self.size
        return {i: 1 / max(tokens, 1) for i in own}, self.preference.weight / max(groups, 1)

    def _scaled(self, logps: torch.Tensor, rows: list[Row], indices: list[int]) -> torch.Tensor:
        if not self.preference.length_normalized:
            return logps
        return logps / torch.tensor([max(completion_tokens(rows[i]), 1) for i in indices], device=logps.device)

    def part_loss(self, model, rows: list[Row], part: list[int], weights: dict[int, float], pair_weight: float,
                  pad_id: int, device: torch.device, packed: bool) -> tuple[torch.Tensor, list[float]]:
        """One forward pass's share of the step's loss: its own rows' weighted NLL plus `pair_weight` x its
        groups' losses (a pair's rows are in one part), and [summed term loss, summed margin or signed reward,
        groups]."""
        logps = sequence_logps(model, [rows[i] for i in part], pad_id, device, packed)
        own = [k for k, i in enumerate(part) if i < self.examples]
        loss = -(logps[own] * torch.tensor([weights[part[k]] for k in own], device=logps.device)).sum()
        at = {i: k for k, i in enumerate(part)}
        first = [i for i in self.pair_rows(part) if (i - self.examples) % self.size == 0]
        if not first:
            return loss, [0.0, 0.0, 0]
        reference = self.reference[tuple(part)]

        def sequences(side: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            ref = torch.tensor([reference[i] for i in side], device=logps.device)
            return self._scaled(logps[[at[i] for i in side]], rows, side), self._scaled(ref, rows, side)

        if self.size == 1:
            policy, ref = sequences(first)
            labels = torch.tensor([self.desirable[i - self.examples] for i in first], device=logps.device)
            losses, margins = kto_losses(policy, ref, labels, self.preference.beta, self.desirable_weight)
        else:
            rejected = [i + 1 for i in first]
            if missing := [i for i in rejected if i not in at]:  # packed_part_indices with units() never does this
                raise RuntimeError(f"a pair was cut apart (rows {missing} missing from the part)")
            (policy_chosen, ref_chosen), (policy_rejected, ref_rejected) = sequences(first), sequences(rejected)
            losses, margins = dpo_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                         self.preference.beta)
        return loss + pair_weight * losses.sum(), [losses.sum().item(), margins.sum().item(), len(first)]

    def needed(self, parts: list[list[int]]) -> list[Part]:
        """The parts whose pair rows need reference log-probs, each once."""
        return list(dict.fromkeys(tuple(part) for part in parts if self.pair_rows(part)))

    def compute_reference(self, model, rows: list[Row], parts: list[list[int]], pad_id: int, device: torch.device,
                          packed: bool) -> dict[Part, dict[int, float]]:
        """The pair rows' log-probs under the model as it is now, before step 1 (the adapter on, in eval mode:
        no dropout), part by part as the training runs them: the base model for a new LoRA (its B is zero),
        the adapter a continued training starts from. Call it under the training's autocast and, packed, in
        tree_attention. Without gradients, but with training's kernels (`kernels_as_in_training`: on a CPU
        tree attention's bf16 matmul or fp32 SDPA, where a plain no-grad forward runs bf16 SDPA), so the
        log-ratio at step 1 is exactly 0. With gradients on, as until 2026-12-07, it built a graph for nothing:
        laffi-dpo's pass over the demo's set for 32 steps took 56.4 s against 45.2 s now, the saved log-probs
        the same to the bit (one run each, 2-core AMD EPYC; the 32 steps themselves took 124-130 s)."""
        peft_model = unwrapped(model)
        peft_model.eval()
        reference = {}
        try:
            with torch.no_grad(), kernels_as_in_training():
                for part in self.needed(parts):
                    logps = sequence_logps(model, [rows[i] for i in part], pad_id, device, packed).detach().tolist()
                    reference[part] = {i: logps[k] for k, i in enumerate(part) if i >= self.examples}
        finally:
            peft_model.train()
        return reference


def save_reference(path: Path, reference: dict[Part, dict[int, float]]) -> None:
    """JSON keeps an fp32 log-prob exactly (a float64 holds it, and its shortest repr reads back the same)."""
    write_json(path, {"parts": [{"rows": list(part), "logps": {str(row): value for row, value in logps.items()}}
                                for part, logps in reference.items()]})


def load_reference(path: Path, needed: list[Part]) -> dict[Part, dict[int, float]]:
    saved = {tuple(entry["rows"]): {int(row): value for row, value in entry["logps"].items()}
             for entry in json.loads(path.read_text(encoding="utf-8"))["parts"]}
    if set(saved) != set(needed):
        raise ValueError(f"{path}: reference log-probs of other batches than this training's (another set or "
                         "train section); delete the adapter's folder to train it from the start")
    return saved
