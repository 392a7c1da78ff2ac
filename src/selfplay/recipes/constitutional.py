"""Constitutional AI (Bai et al., 2022), one iteration: the model improves its answers by written principles.

Supervised phase (the paper's SL-CAI; `constitution.phase: supervised`): the model answers each training prompt
(`generate`, samples.jsonl); then for r = 1..`constitution.rounds` it critiques its latest answer by a principle
drawn from the constitution (`critique-r`, critiques-r.jsonl) and rewrites it by the same principle (`revise-r`,
revisions-r.jsonl). Each response's requests are one conversation that grows by a round at a time:

    user: prompt | assistant: response | user: critique request | assistant: critique |
    user: revision request | assistant: revision | user: next critique request | ...

An empty revision, or one cut off at its token cap (unless `keep_truncated`), falls back to the previous text, and
is counted. The final texts (`revised`, revised.jsonl) are scored by the run's verifier (`verify`, verdicts.jsonl;
with `constitution.verify` only those it passes are kept) and become SFT examples under the original prompt
alone: no critique turn and no principle text reaches training.

Preference phase (RLAIF; `phase: preference`): DPO on pairs. `pairs: revision` takes the final revision as chosen
and the first response as rejected (what the open-source CAI recipes do). `pairs: judged` samples two responses
per prompt and lets `judge.model` (default: the model being trained) compare them by a principle drawn per
prompt, in both orders (`PairwiseJudge`: neutralised, fenced, read from the model's probabilities of A and B in
`judge.mode: constrained`); only a judgement that agrees in both orders makes a pair (`compare`,
comparisons.jsonl, and verdicts.jsonl: each response won, lost or tied).

The `constitution` stage copies the principles into the iteration folder (constitution.jsonl) with every draw
(principles.jsonl). A draw is a hash of the run seed, the iteration, the response (or prompt) and the round, so a
resumed run draws the same; later stages read the copy, so editing the file mid-run changes only later iterations.

Whether critique and revision help is measured, not assumed: when the run has a gold checker that is not the LLM
judge (ifeval on the instruction task), the filter stage reports the gold pass rate of the first responses and
after every round, and how many revisions the checker says got better or worse; for judged pairs, how often the
chosen response is the gold-better one. Not covered: the paper's chain-of-thought feedback and its few-shot
critique examples (a 135M model cannot use them); a revision is whatever the model writes, preamble included.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from selfplay.config import ConstitutionConfig
from selfplay.errors import UserError
from selfplay.files import JsonlAppender, atomic_write_jsonl, read_jsonl, recover_partial_jsonl
from selfplay.filters import normalize
from selfplay.interfaces import SamplingParams
from selfplay.loop.context import RunContext
from selfplay.records import Example, Message, Pair, Problem, Sample, Verdict, to_dict
from selfplay.tasks.prompts import Principle, load_constitution
from selfplay.training import DPO, SFT
from selfplay.verifiers import Verifier, verify_all
from selfplay.verifiers.judge import NAME as JUDGE
from selfplay.verifiers.judge import PAIRWISE_BODY, PairwiseJudge

NAME = "constitution"  # the verifier named on the verdicts of judged comparisons

# Our wording; PairwiseJudge fills the slots, fences both responses and reads the last line.
COMPARE_TEMPLATE = "Compare two responses to the same request by one principle: {principle}\n\n" + PAIRWISE_BODY


def draw(principles: Sequence[Principle], seed: int, iteration: int, key: str, round_: int) -> Principle:
    """The principle for one response (or prompt) and round: random, but the same every time it is asked."""
    digest = hashlib.sha256(f"{seed}\x00{iteration}\x00{key}\x00{round_}".encode()).digest()
    return principles[int.from_bytes(digest[:8], "big") % len(principles)]


def compare_question(principle: Principle) -> str:
    """What a judge is asked about two responses: the principle's own question, or one made from its critique."""
    if principle.compare:
        return principle.compare
    return f'which response deserves less of this criticism: "{principle.critique}"'


def _user(text: str) -> Message:
    return {"role": "user", "content": text}


def _assistant(text: str) -> Message:
    return {"role": "assistant", "content": text}


def usable(revision: Sample, keep_truncated: bool) -> bool:
    """Whether a revision replaces the text before it: not empty, and not cut off (unless that is allowed)."""
    return bool(revision.completion.strip()) and (keep_truncated or revision.finish_reason != "length")


@dataclass
class Chain:
    """One response's critiques and revisions: the conversation so far and the current text after each round."""

    problem: Problem
    first: Sample
    history: list[Message] = field(default_factory=list)  # ends with the current text, as the assistant's turn
    texts: list[Sample] = field(default_factory=list)  # after round 0 (the response), 1, ...; under problem's id
    critiques: list[str] = field(default_factory=list)
    fallbacks: list[int] = field(default_factory=list)  # the rounds whose revision was not usable

    @classmethod
    def start(cls, problem: Problem, first: Sample) -> Chain:
        return cls(problem, first, [*problem.chat(), _assistant(first.completion)], [first])

    @property
    def current(self) -> Sample:
        return self.texts[-1]

    @property
    def changed(self) -> bool:
        return normalize(self.current.completion) != normalize(self.first.completion)

    def critique_request(self, principle: Principle, r: int) -> Problem:
        """Round r's critique request: the conversation so far, then the principle's critique request."""
        return replace(self.problem, id=f"{self.first.id}/critique-{r}",
                       meta={**self.problem.meta, "principle": principle.name, "round": r},
                       messages=[*self.history, _user(principle.critique)])

    def revision_request(self, principle: Principle, critique: str, r: int) -> Problem:
        """Round r's revision request: the critique request and its answer, then the revision request."""
        return replace(self.problem, id=f"{self.first.id}/revise-{r}",
                       meta={**self.problem.meta, "principle": principle.name, "round": r},
                       messages=[*self.history, _user(principle.critique), _assistant(critique),
                                 _user(principle.revision)])

    def advance(self, principle: Principle, critique: Sample, revision: Sample, keep_truncated: bool) -> None:
        """Take the round's revision as the current text (or keep the text before it) and grow the conversation."""
        self.critiques.append(critique.completion)
        if usable(revision, keep_truncated):
            self.texts.append(replace(revision, problem_id=self.problem.id))
        else:
            self.fallbacks.append(len(self.texts))
            self.texts.append(self.current)
        self.history += [_user(principle.critique), _assistant(critique.completion), _user(principle.revision),
                         _assistant(self.current.completion)]


@dataclass(frozen=True)
class Comparison:
    """Two responses to one prompt compared by a principle in both orders: 'a', 'b', 'tie' or 'identical'."""

    problem_id: str
    principle: str
    a: str  # sample ids
    b: str
    outcome: str


# -- the stages --------------------------------------------------------------------------------------------
def freeze_constitution(ctx: RunContext, i: int, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], Principle]:
    """Stage 'constitution': copy the principles into the iteration and draw one per (response, round) key."""
    c, it_dir = ctx.cfg.constitution, ctx.rundir.iter_dir(i)

    def run() -> dict[str, Any]:
        principles = load_constitution(c.path)
        atomic_write_jsonl(it_dir / "constitution.jsonl", (asdict(p) for p in principles))
        rows = [{"id": k, "round": r, "principle": draw(principles, ctx.cfg.seed, i, k, r).name} for k, r in keys]
        atomic_write_jsonl(it_dir / "principles.jsonl", rows)
        return {"path": c.path, "principles": len(principles), "drawn": dict(Counter(r["principle"] for r in rows))}

    ctx.stage(i, "constitution", run)
    by_name = {p.name: p for p in load_constitution(str(it_dir / "constitution.jsonl"))}
    return {(row["id"], row["round"]): by_name[row["principle"]] for row in read_jsonl(it_dir / "principles.jsonl")}


def revise(ctx: RunContext, i: int, source: Path, draws: dict[tuple[str, int], Principle]) -> list[Chain]:
    """Stages 'critique-r' and 'revise-r' for every round; each is skipped when done, so this also rebuilds."""
    cfg, c, g = ctx.cfg, ctx.cfg.constitution, ctx.cfg.generate
    by_id = {p.id: p for p in ctx.train_problems}
    chains = [Chain.start(by_id[s.problem_id], s) for s in ctx.records(i, "samples", Sample)]
    for r in range(1, c.rounds + 1):
        seed = cfg.seed + 1000 * i + 10 * r
        principles = [draws[(ch.first.id, r)] for ch in chains]
        asks = [ch.critique_request(p, r) for ch, p in zip(chains, principles, strict=True)]
        params = SamplingParams(n=1, temperature=g.temperature, top_p=g.top_p,
                                max_new_tokens=c.critique_max_new_tokens, seed=seed + 1)
        ctx.generate(i, asks, source, params, stage=f"critique-{r}", out=f"critiques-{r}")
        critiques = {s.problem_id: s for s in ctx.records(i, f"critiques-{r}", Sample)}
        said = [critiques[a.id] for a in asks]
        revs = [ch.revision_request(p, crit.completion, r)
                for ch, p, crit in zip(chains, principles, said, strict=True)]
        params = replace(params, max_new_tokens=c.revision_max_new_tokens or g.max_new_tokens, seed=seed + 2)
        ctx.generate(i, revs, source, params, stage=f"revise-{r}", out=f"revisions-{r}")
        revisions = {s.problem_id: s for s in ctx.records(i, f"revisions-{r}", Sample)}
        for ch, p, crit, rev in zip(chains, principles, said, revs, strict=True):
            ch.advance(p, crit, revisions[rev.id], c.keep_truncated)
    return chains


def revision_counts(chains: Sequence[Chain], rounds: int) -> dict[str, Any]:
    return {
        "responses": len(chains),
        "rounds": rounds,
        "revisions": len(chains) * rounds,
        "changed": sum(ch.changed for ch in chains),
        "unchanged": sum(not ch.changed for ch in chains),
        "fallbacks": sum(len(ch.fallbacks) for ch in chains),
        "fallbacks_by_round": [sum(r in ch.fallbacks for ch in chains) for r in range(1, rounds + 1)],
        "empty_critiques": sum(not t.strip() for ch in chains for t in ch.critiques),
    }


def write_revised(it_dir: Path, chains: Sequence[Chain], rounds: int) -> dict[str, Any]:
    """Stage 'revised': each response's final text, under its problem's id, for the verifier (revised.jsonl)."""
    atomic_write_jsonl(it_dir / "revised.jsonl", (to_dict(ch.current) for ch in chains))
    return revision_counts(chains, rounds)


def compare(ctx: RunContext, i: int, draws: dict[tuple[str, int], Principle]) -> dict[str, Any]:
    """Stage 'compare': each prompt's two responses judged by its principle in both orders; resumes per batch."""
    cfg, it_dir = ctx.cfg, ctx.rundir.iter_dir(i)
    samples = ctx.records(i, "samples", Sample)
    pair_of: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        pair_of[s.problem_id].append(s)
    partial, final = it_dir / "comparisons.partial.jsonl", it_dir / "comparisons.jsonl"
    if not (final.is_file() and not partial.exists()):
        rows, torn = recover_partial_jsonl(partial)
        if torn:
            atomic_write_jsonl(partial, rows)
        done = {row["problem_id"] for row in rows}
        if done:
            print(f"{it_dir.name}/comparisons.jsonl: resuming; {len(done)} of {len(pair_of)} prompts already "
                  "compared", flush=True)
        todo = [p for p in ctx.train_problems if p.id in pair_of and p.id not in done]
        by_principle: dict[str, list[Problem]] = defaultdict(list)
        for p in todo:
            by_principle[draws[(p.id, 0)].name].append(p)
        principles = {draws[(p.id, 0)].name: draws[(p.id, 0)] for p in todo}
        with JsonlAppender(partial) as out:
            for name, problems in by_principle.items():
                judge = PairwiseJudge(cfg.judge, ctx.models.generator(cfg.judge.model), cfg.seed + i,
                                      template=COMPARE_TEMPLATE.replace("{principle}",
                                                                        compare_question(principles[name])))
                size = max(1, cfg.judge.batch_size // 2)  # each prompt is asked twice, once in each order
                for b in range(0, len(problems), size):
                    out.write_many(asdict(c) for c in _compare_batch(judge, name, problems[b : b + size], pair_of))
        order = {p.id: n for n, p in enumerate(ctx.train_problems)}
        rows = sorted(read_jsonl(partial), key=lambda row: order[row["problem_id"]])
        atomic_write_jsonl(final, rows)
        partial.unlink()
    comparisons = ctx.records(i, "comparisons", Comparison)
    atomic_write_jsonl(it_dir / "verdicts.jsonl", (to_dict(v) for v in comparison_verdicts(comparisons, cfg)))
    counts = Counter(c.outcome for c in comparisons)
    return {"prompts": len(comparisons), "judge": cfg.judge.model, "mode": cfg.judge.mode,
            "agreed": counts["a"] + counts["b"], "ties": counts["tie"], "identical": counts["identical"]}


def _compare_batch(judge: PairwiseJudge, principle: str, problems: Sequence[Problem],
                   pair_of: dict[str, list[Sample]]) -> list[Comparison]:
    asked = [p for p in problems if normalize(pair_of[p.id][0].completion) != normalize(pair_of[p.id][1].completion)]
    outcomes = dict(zip([p.id for p in asked], judge.compare(
        [(p.id, p.prompt, pair_of[p.id][0].completion, pair_of[p.id][1].completion) for p in asked]), strict=True))
    return [Comparison(p.id, principle, pair_of[p.id][0].id, pair_of[p.id][1].id, outcomes.get(p.id, "identical"))
            for p in problems]


def comparison_verdicts(comparisons: Sequence[Comparison], cfg: Any) -> list[Verdict]:
    """Each compared response's verdict: won (1), lost (0), or tied (0.5), with the principle and its rival."""
    out = []
    for c in comparisons:
        for me, rival, side in ((c.a, c.b, "a"), (c.b, c.a, "b")):
            result = "won" if c.outcome == side else "lost" if c.outcome in ("a", "b") else "tie"
            note = {"principle": c.principle, "against": rival, "outcome": c.outcome, "judge": cfg.judge.model,
                    "mode": cfg.judge.mode}
            out.append(Verdict(me, c.problem_id, {"won": 1.0, "lost": 0.0, "tie": 0.5}[result], result == "won",
                               result, NAME, json.dumps(note)))
    return out


# -- selection ---------------------------------------------------------------------------------------------
def revision_examples(
    chains: Sequence[Chain], verdicts: Sequence[Verdict], *, iteration: int, verify: bool, drop_unchanged: bool,
    drop_truncated: bool, dedupe: bool, max_per_problem: int,
) -> tuple[list[Example], dict[str, Any]]:
    """SFT examples of the final texts, each under its problem's original prompt (no critique, no principle)."""
    passed = {v.sample_id for v in verdicts if v.passed}
    skipped: Counter[str] = Counter()
    seen: dict[str, set[str]] = defaultdict(set)
    per: Counter[str] = Counter()
    examples = []
    for ch in chains:
        final, pid = ch.current, ch.problem.id
        key = normalize(final.completion)
        reason = ("empty" if not key else "failed_verify" if verify and final.id not in passed
                  else "dropped_unchanged" if drop_unchanged and not ch.changed
                  else "truncated" if drop_truncated and final.finish_reason == "length"
                  else "duplicates" if dedupe and key in seen[pid]
                  else "over_cap" if per[pid] >= max_per_problem else None)
        if reason:
            skipped[reason] += 1
            continue
        seen[pid].add(key)
        per[pid] += 1
        examples.append(Example(id=f"it{iteration}/{ch.first.id}/revised", problem_id=pid, sample_id=final.id,
                                prompt=ch.problem.prompt, completion=final.completion, iteration=iteration,
                                messages=ch.problem.messages))
    stats = {k: skipped[k] for k in ("empty", "failed_verify", "dropped_unchanged", "truncated", "duplicates",
                                     "over_cap")}
    return examples, stats


def revision_pairs(
    chains: Sequence[Chain], verdicts: Sequence[Verdict], *, iteration: int, verify: bool, drop_truncated: bool,
) -> tuple[list[Pair], dict[str, Any]]:
    """Pairs of the final revision (chosen) against the first response (rejected); unchanged ones make none."""
    passed = {v.sample_id for v in verdicts if v.passed}
    skipped: Counter[str] = Counter()
    pairs = []
    for ch in chains:
        final = ch.current
        reason = ("unchanged" if not ch.changed else "failed_verify" if verify and final.id not in passed
                  else "truncated" if drop_truncated and final.finish_reason == "length" else None)
        if reason:
            skipped[reason] += 1
            continue
        pairs.append(Pair(id=f"it{iteration}/{ch.first.id}/pair", problem_id=ch.problem.id, prompt=ch.problem.prompt,
                          chosen=final.completion, rejected=ch.first.completion, chosen_sample_id=final.id,
                          rejected_sample_id=ch.first.id, chosen_score=1.0, rejected_score=0.0, iteration=iteration,
                          messages=ch.problem.messages))
    return pairs, {f"pairs_{k}": skipped[k] for k in ("unchanged", "failed_verify", "truncated")}


def judged_pairs(
    problems: Sequence[Problem], samples: Sequence[Sample], comparisons: Sequence[Comparison], *, iteration: int,
    drop_truncated: bool,
) -> tuple[list[Pair], dict[str, Any]]:
    """A pair from each comparison that came out the same in both orders: the winner chosen, the loser rejected."""
    by_id = {p.id: p for p in problems}
    by_sid = {s.id: s for s in samples}
    counts = Counter(c.outcome for c in comparisons)
    stats: dict[str, Any] = {"compared": len(comparisons), "agreed": counts["a"] + counts["b"], "ties": counts["tie"],
                             "identical": counts["identical"], "truncated": 0}
    pairs = []
    for c in comparisons:
        if c.outcome not in ("a", "b"):
            continue
        chosen, rejected = (by_sid[c.a], by_sid[c.b]) if c.outcome == "a" else (by_sid[c.b], by_sid[c.a])
        if drop_truncated and chosen.finish_reason == "length":
            stats["truncated"] += 1
            continue
        problem = by_id[c.problem_id]
        pairs.append(Pair(id=f"it{iteration}/{c.problem_id}/pair", problem_id=c.problem_id, prompt=problem.prompt,
                          chosen=chosen.completion, rejected=rejected.completion, chosen_sample_id=chosen.id,
                          rejected_sample_id=rejected.id, chosen_score=1.0, rejected_score=0.0, iteration=iteration,
                          messages=problem.messages))
    stats["chosen_longer"] = sum(len(p.chosen) > len(p.rejected) for p in pairs) / len(pairs) if pairs else None
    return pairs, stats


# -- gold figures ------------------------------------------------------------------------------------------
def gold_checker(ctx: RunContext) -> Verifier | None:
    """The run's gold checker when it is a real one: the LLM judge is the model's own opinion, not a gold."""
    return ctx.gold if ctx.gold is not None and ctx.gold.name != JUDGE else None


def _rate(values: Sequence[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def revision_gold(gold: Verifier, chains: Sequence[Chain]) -> dict[str, Any]:
    """Gold pass rate of the responses and of the text after each round, and the revisions it says helped or hurt."""
    texts = {t.id: (ch.problem, t) for ch in chains for t in ch.texts}  # a fallback repeats a sample: judged once
    passed = {v.sample_id: v.passed for v in verify_all(gold, list(texts.values()))}
    rounds = len(chains[0].texts) if chains else 0
    by_round = [_rate([passed[ch.texts[r].id] for ch in chains]) for r in range(rounds)]
    return {
        "gold": gold.name,
        "gold_pass_first": by_round[0] if by_round else None,
        "gold_pass_revised": by_round[-1] if by_round else None,
        "gold_pass_by_round": by_round,
        "gold_improved": sum(passed[ch.current.id] and not passed[ch.first.id] for ch in chains),
        "gold_worsened": sum(passed[ch.first.id] and not passed[ch.current.id] for ch in chains),
    }


def judged_gold(gold: Verifier, problems: Sequence[Problem], samples: Sequence[Sample],
                pairs: Sequence[Pair]) -> dict[str, Any]:
    """Gold pass rate of the responses, and how often a pair's chosen response is the gold-better one."""
    by_id = {p.id: p for p in problems}
    verdicts = verify_all(gold, [(by_id[s.problem_id], s) for s in samples])
    score = {v.sample_id: v.score for v in verdicts}
    right = sum(score[p.chosen_sample_id] > score[p.rejected_sample_id] for p in pairs)
    wrong = sum(score[p.chosen_sample_id] < score[p.rejected_sample_id] for p in pairs)
    return {"gold": gold.name, "gold_pass_rate": _rate([v.passed for v in verdicts]),
            "pair_accuracy_gold": right / (right + wrong) if right + wrong else None,
            "pairs_gold_tied": len(pairs) - right - wrong}


# -- the iteration -----------------------------------------------------------------------------------------
def check(cfg: Any, task: Any, train: Sequence[Problem]) -> None:
    """The constitution file is read, and the sampling settings checked, before anything is written."""
    c: ConstitutionConfig = cfg.constitution
    try:
        load_constitution(c.path)
    except UserError as e:
        said = str(e)
        raise UserError(said if said.startswith("constitution.path") else f"constitution.path: {said}") from None
    n = c.responses_per_prompt
    if n > 1 and cfg.generate.temperature == 0.0:
        raise UserError(f"generate.temperature: 0 (greedy) gives one response per prompt, and this run samples {n}; "
                        "set a temperature above 0")


def run_iteration(ctx: RunContext, i: int, source: Path) -> Path:
    supervised = training_data(ctx, i, source)
    removed = ctx.review(i)
    return ctx.train(i, SFT() if supervised else DPO(), ctx.init_model(source), source, removed)


def training_data(ctx: RunContext, i: int, source: Path) -> bool:
    """The stages up to the filter: train.jsonl (supervised) or pairs.jsonl (preference). True when supervised."""
    cfg = ctx.cfg
    c: ConstitutionConfig = cfg.constitution
    judged = c.phase == "preference" and c.pairs == "judged"
    n = c.responses_per_prompt
    ctx.generate(i, ctx.train_problems, source, cfg.generate.params(n, cfg.seed + 1000 * i))
    first = ctx.records(i, "samples", Sample)
    gold = gold_checker(ctx)
    f = cfg.filter

    if judged:
        keys = [(p.id, 0) for p in ctx.train_problems]
        draws = freeze_constitution(ctx, i, keys)
        ctx.stage(i, "compare", lambda: compare(ctx, i, draws))

        def select(problems: Sequence[Problem], samples: Sequence[Sample], verdicts: Sequence[Verdict]):
            pairs, stats = judged_pairs(problems, samples, ctx.records(i, "comparisons", Comparison), iteration=i,
                                        drop_truncated=f.drop_truncated)
            if gold is not None:
                stats.update(judged_gold(gold, problems, samples, pairs))
            return pairs, stats
    else:
        draws = freeze_constitution(ctx, i, [(s.id, r) for s in first for r in range(1, c.rounds + 1)])
        chains = revise(ctx, i, source, draws)
        it_dir = ctx.rundir.iter_dir(i)
        ctx.stage(i, "revised", lambda: write_revised(it_dir, chains, c.rounds))
        ctx.verify(i, ctx.train_problems, samples="revised")

        def select(problems: Sequence[Problem], samples: Sequence[Sample], verdicts: Sequence[Verdict]):
            stats = revision_counts(chains, c.rounds)
            stats.update(samples=len(verdicts), passed=sum(v.passed for v in verdicts), verified=c.verify,
                         problems_solved=len({v.problem_id for v in verdicts if v.passed}))
            if c.phase == "supervised":
                records, skipped = revision_examples(
                    chains, verdicts, iteration=i, verify=c.verify, drop_unchanged=c.drop_unchanged,
                    drop_truncated=f.drop_truncated, dedupe=f.dedupe, max_per_problem=f.max_per_problem)
            else:
                records, skipped = revision_pairs(chains, verdicts, iteration=i, verify=c.verify,
                                                  drop_truncated=f.drop_truncated)
            stats.update(skipped)
            if gold is not None:
                stats.update(revision_gold(gold, chains))
            return records, stats

    supervised = c.phase == "supervised"
    ctx.select(i, ctx.train_problems, select, Example if supervised else Pair)
    return supervised
