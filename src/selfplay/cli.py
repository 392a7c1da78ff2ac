"""The `selfplay` command. COMMANDS maps each subcommand to the function that runs it.

    selfplay run [CONFIG.yaml] [key=value ...]     start (or continue) a run
    selfplay resume RUN_DIR [key=value ...]        continue a run from its last finished stage
    selfplay eval MODEL [--task T] [key=value ...] held-out accuracy of a model on a task
    selfplay report RUN_DIR                        write RUN_DIR/report.html (plots, guards, lineage)
    selfplay review RUN_DIR                        show the training examples waiting for review
    selfplay approve RUN_DIR [--reject ID ...]     let a waiting run go on, without the rejected examples
    selfplay reject RUN_DIR [--reason TEXT]        stop a waiting run
    selfplay serve [RUNS_DIR]                      web app: watch runs, review, judge iterations blind
    selfplay export RUN_DIR OUT_DIR                copy the best iteration's model (or --iteration N)
    selfplay judge [CONFIG] --prompt P --response R  score responses with the config's LLM judge (or --file)
    selfplay sandbox PROGRAM.py --tests TESTS.py   run a program against its tests in the sandbox (JSON verdict)
    selfplay init [PATH]                           write a commented starter config
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from selfplay.errors import UserError


def _offline_env() -> None:
    # Nothing is fetched at run time: models and data come from local files or installed packages.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "TRUE")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # Library deprecation notices are for us, not for the person running a job.
    warnings.filterwarnings("ignore", category=FutureWarning)


def _split_config_and_overrides(items: list[str]) -> tuple[Path | None, list[str]]:
    if items and "=" not in items[0]:
        return Path(items[0]), items[1:]
    return None, items


def cmd_run(args: argparse.Namespace) -> int:
    from selfplay import api
    from selfplay import config as configlib

    path, overrides = _split_config_and_overrides(args.items)
    cfg = configlib.load_config(path, overrides)
    api.run(cfg, allow_change=args.allow_config_change)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from selfplay import api

    api.resume(Path(args.run_dir), args.overrides, allow_change=args.allow_config_change)
    return 0


def task_overrides(task: str) -> list[str]:
    """Overrides for `--task`: a file or a reasoning-gym dataset, starting from that dataset's own defaults."""
    if task == "humaneval":
        return ["task.source=humaneval", "task.eval_size=164", "task.params={}"]
    if task == "code":
        return ["task.source=code", "task.params={}"]
    if task.endswith(".jsonl") or task.startswith("builtin:"):
        return ["task.source=jsonl", f"task.path={task}", "task.params={}"]
    return ["task.source=reasoning_gym", f"task.dataset={task}", "task.params={}"]


def cmd_eval(args: argparse.Namespace) -> int:
    from selfplay import api
    from selfplay import config as configlib

    overrides = [*(task_overrides(args.task) if args.task else []), *args.overrides]
    cfg = configlib.load_config(Path(args.config) if args.config else None, overrides)
    # A run's own config.yaml brings the run's frozen held-out split; otherwise split afresh.
    split_from = Path(args.config).parent if args.config else None
    result, eval_dir = api.evaluate_model(cfg, args.model, Path(args.out) if args.out else None, split_from)
    print(json.dumps({"model": result["model"], "task": cfg.task.label, **result["metrics"]}, indent=2))
    print(f"Samples and verdicts: {eval_dir}", file=sys.stderr)
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from selfplay.sandbox import Limits, Sandbox, TestSpec
    from selfplay.tasks.code import called_function, split_tests

    texts = {}
    for name, path in (("PROGRAM", args.program), ("--tests", args.tests)):
        try:
            texts[name] = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{name} {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    options: dict[str, object] = {}
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--option {item!r}: expected KEY=VALUE, e.g. timeout=5")
        options[key] = value if key == "python" else _number(key, value)
    limits = Limits.from_options(options, "--option")
    asserts, check = split_tests(texts["--tests"], f"--tests {args.tests}")
    entry = args.entry_point or (called_function(asserts) if asserts else None)
    if entry is None:
        raise UserError(f"--tests {args.tests}: give --entry-point NAME (the function check(candidate) is called with)")
    spec = TestSpec(entry, tests=asserts, check=check)
    result = Sandbox(limits).run(texts["PROGRAM"], spec)
    print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    return 0


def _number(key: str, value: str) -> int | float:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    raise UserError(f"--option {key}={value}: expected a number")


def _judge_rows(args: argparse.Namespace) -> list[dict[str, str]]:
    if args.file:
        from selfplay.files import read_jsonl

        path = Path(args.file)
        if not path.is_file():
            raise UserError(f"{path}: file not found")
        rows = read_jsonl(path)
        for n, row in enumerate(rows, start=1):
            missing = [k for k in ("prompt", "response") if not isinstance(row.get(k), str)]
            if missing:
                raise UserError(f"{path} line {n}: needs text fields 'prompt' and 'response' "
                                f"(missing or not text: {', '.join(missing)})")
        return rows
    if args.prompt is None or not args.response:
        raise UserError("judge: give --prompt TEXT and one or more --response TEXT, or --file ROWS.jsonl")
    return [{"prompt": args.prompt, "response": r} for r in args.response]


def cmd_judge(args: argparse.Namespace) -> int:
    from selfplay import api
    from selfplay import config as configlib

    path, overrides = _split_config_and_overrides(args.items)
    cfg = configlib.load_config(path, overrides)
    rows = _judge_rows(args)
    results = api.judge_responses(cfg, rows, args.model)
    for row, res in zip(rows, results, strict=True):
        if args.json:
            print(json.dumps({**row, **res}, ensure_ascii=False))
            continue
        score = "unparsed" if res["score"] is None else f"{res['score']:.2f}"
        print(f"[{res['row']}] score {score}  (judge: {cfg.judge.model}, mode {cfg.judge.mode}, fence {res['fence']})")
        if res.get("rule"):
            print(f"    {res['rule']}")
        for text in res.get("removed", []):
            print(f"    removed before judging: {text!r}")
        if "probs" in res:
            probs = "  ".join(f"{d}:{p:.2f}" for d, p in enumerate(res["probs"]))
            print(f"    P(score) {probs}   (mass on digits {res['digit_mass']:.2f})")
        for k, text in enumerate(res.get("judgements", []), start=1):
            print(f"    judgement {k}: " + text.strip().replace("\n", "\n        "))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from selfplay.config import starter_yaml

    path = Path(args.path)
    if path.exists() and not args.force:
        raise UserError(f"{path}: already exists (pass --force to overwrite)")
    path.write_text(starter_yaml(), encoding="utf-8")
    print(f"Wrote {path}. Start a run with: selfplay run {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from selfplay.reporting import write_report

    print(write_report(Path(args.run_dir), Path(args.out) if args.out else None))
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from selfplay.loop.review import show

    print(show(Path(args.run_dir)))
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    from selfplay.loop.review import decide

    print(decide(Path(args.run_dir), "approved", args.reject or [], flipped_ids=args.flip or [],
                 confirmed_ids=args.confirm or [], who=os.environ.get("USER", "")))
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    from selfplay.loop.review import decide

    print(decide(Path(args.run_dir), "rejected", reason=args.reason))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from selfplay.web.server import serve

    serve(Path(args.runs_dir), args.host, args.port, args.allow_remote)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from selfplay.loop.export import export

    note = export(Path(args.run_dir), Path(args.out), args.iteration, args.force)
    which = "best " if note["best"] else ""
    print(f"Exported the {which}model of iteration {note['iteration']} ({note['metric']} {note['value']:.1%}) "
          f"to {args.out}")
    return 0


def cmd_train_rm(args: argparse.Namespace) -> int:
    from selfplay import config as configlib
    from selfplay.preferences import train_rm

    cfg = configlib.load_config(None, args.overrides)
    figures = train_rm(Path(args.pairs), Path(args.out), cfg, args.heldout, args.max_length, args.force,
                       Path(args.human) if args.human else None, args.human_weight)
    acc = figures.get("accuracy")
    held = (f"{acc:.1%} of {figures['heldout_pairs']} held-out pairs ranked right" if acc is not None
            else "no pairs held out")
    print(f"Reward model: {args.out} ({held}); figures in {Path(args.out) / 'rm_eval.json'}. Use it with "
          f"verify.verifier=reward_model verify.options.path={args.out}")
    return 0


COMMANDS = {
    "run": cmd_run, "resume": cmd_resume, "eval": cmd_eval, "report": cmd_report, "review": cmd_review,
    "approve": cmd_approve, "reject": cmd_reject, "export": cmd_export, "init": cmd_init, "judge": cmd_judge,
    "sandbox": cmd_sandbox, "train-rm": cmd_train_rm, "serve": cmd_serve,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfplay", description="Make a language model better by training it on its own verified output."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="start a run (or continue it, if its folder exists with the same config)")
    p.add_argument("items", nargs="*", metavar="CONFIG.yaml | key=value", help="a config file, then overrides")
    p.add_argument("--allow-config-change", action="store_true", help="continue an existing run with a changed config")

    p = sub.add_parser("resume", help="continue a run from its last finished stage")
    p.add_argument("run_dir", help="the run folder, e.g. runs/rft-default")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="changes to the frozen config (need --allow-config-change)"
    )
    p.add_argument("--allow-config-change", action="store_true", help="accept overrides that change the frozen config")

    p = sub.add_parser("eval", help="held-out accuracy and pass@k of a model on a task")
    p.add_argument("model", help="'embedded:smollm2-135m-instruct' or a model folder (e.g. runs/NAME/iter-002/model)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. task.eval_size=200")
    p.add_argument("--task", help="a reasoning-gym dataset name or a .jsonl file")
    p.add_argument("--config", help="take task and eval settings from this config (a run's config.yaml works)")
    p.add_argument("--out", help="folder for the eval samples (default: a new temporary folder)")

    p = sub.add_parser("report", help="write the run's report.html (and TensorBoard scalars if installed)")
    p.add_argument("run_dir")
    p.add_argument("--out", help="where to write the page (default: RUN_DIR/report.html)")

    p = sub.add_parser("review", help="show the training examples a paused run is waiting on")
    p.add_argument("run_dir")

    p = sub.add_parser("approve", help="let a run waiting for review go on")
    p.add_argument("run_dir")
    p.add_argument("--reject", nargs="+", metavar="EXAMPLE_ID", help="example ids to remove before training")
    p.add_argument("--flip", nargs="+", metavar="PAIR_ID", help="preference pairs to train the other way round")
    p.add_argument("--confirm", nargs="+", metavar="PAIR_ID", help="preference pairs you checked are the right way "
                   "round (they count review.human_weight times)")

    p = sub.add_parser("reject", help="stop a run waiting for review")
    p.add_argument("run_dir")
    p.add_argument("--reason", help="why, kept in the run folder")

    p = sub.add_parser("export", help="copy a run's best model (or a chosen iteration's) to a folder")
    p.add_argument("run_dir")
    p.add_argument("out", help="destination folder")
    p.add_argument("--iteration", type=int, help="export this iteration instead of the best")
    p.add_argument("--force", action="store_true", help="replace a non-empty destination")

    p = sub.add_parser("judge", help="score responses with the LLM judge a config describes (to tune its prompt)")
    p.add_argument("items", nargs="*", metavar="CONFIG.yaml | key=value", help="a config file, then overrides")
    p.add_argument("--prompt", help="the request the responses answer")
    p.add_argument("--response", action="append", help="a response to score (repeat for several)")
    p.add_argument("--file", help="JSONL rows with 'prompt' and 'response' fields")
    p.add_argument("--model", help="the model that 'current' and 'base' mean (default: the config's model.path)")
    p.add_argument("--json", action="store_true", help="print one JSON object per response")

    p = sub.add_parser("sandbox", help="run one program against its tests in the code verifier's sandbox; print "
                       "the verdict as JSON")
    p.add_argument("program", metavar="PROGRAM.py", help="the program (untrusted code is fine: it runs isolated)")
    p.add_argument("--tests", required=True, metavar="TESTS.py",
                   help="HumanEval's def check(candidate), or assert lines that call the function by name")
    p.add_argument("--entry-point", help="the function to test (default: the first one the asserts call)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="a sandbox limit: timeout, cpu_seconds, memory_mb, processes, file_size_mb, open_files, "
                   "tmp_mb, output_kb, python (repeat for several)")

    p = sub.add_parser("train-rm", help="train a reward model on preference pairs ({prompt, chosen, rejected} "
                       "JSONL, e.g. a run's pairs.jsonl) with trl's RewardTrainer")
    p.add_argument("pairs", metavar="PAIRS.jsonl")
    p.add_argument("out", metavar="OUT", help="the folder for the reward model (and rm_eval.json)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="model.path (the start model), train.* (method, learning_rate, epochs, batch_size), seed")
    p.add_argument("--heldout", type=float, default=0.1, help="share of pairs held out to measure accuracy (0.1)")
    p.add_argument("--max-length", type=int, default=1024, help="longest prompt + answer in tokens (1024)")
    p.add_argument("--force", action="store_true", help="replace a reward model already in OUT")
    p.add_argument("--human", metavar="HUMAN.jsonl", help="people's pairs to join the AI's (a run's "
                   "human-preferences.jsonl): a person's order wins on the same two answers")
    p.add_argument("--human-weight", type=int, default=2, help="times a person's pair counts (2)")

    p = sub.add_parser("serve", help="a web app for people in the loop: watch runs, review training data, judge "
                       "iterations blind")
    p.add_argument("runs_dir", nargs="?", default="runs", metavar="RUNS_DIR", help="the folder of run folders (runs)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1; another needs --allow-remote)")
    p.add_argument("--port", type=int, default=8765, help="port (8765; 0 picks a free one)")
    p.add_argument("--allow-remote", action="store_true", help="allow a --host that is not loopback (with a warning)")

    p = sub.add_parser("init", help="write a commented starter config")
    p.add_argument("path", nargs="?", default="selfplay.yaml")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    return parser


def main(argv: list[str] | None = None) -> int:
    _offline_env()
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    empty = [n for n, a in enumerate(argv, start=1) if not a.strip()]
    if empty:
        parser.error(f"argument {empty[0]} is empty ({argv[empty[0] - 1]!r}); remove it, or give a value "
                     "(an unset shell variable?)")
    # Overrides may come before or after options (`eval MODEL --task t key=value`): argparse leaves
    # those after an option unparsed, so collect them here.
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        if hasattr(args, "overrides"):
            args.overrides = [*args.overrides, *extra]
        elif hasattr(args, "items"):
            args.items = [*args.items, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"selfplay: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("selfplay: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
