"""The `laffi` command as a new user meets it: every --help prints, and a broken config file is one line."""

import subprocess
import sys

import pytest

from laffi.cli import build_parser, main


def choices() -> dict:
    parser = build_parser()
    (sub,) = [action for action in parser._actions if action.dest == "command"]
    return sub.choices  # every name a command answers to, aliases included


def subcommands() -> list[str]:
    """The commands under their own names (an alias shares its command's parser and prog)."""
    return sorted(name for name, parser in choices().items() if parser.prog == f"laffi {name}")


def aliases() -> dict[str, str]:
    return {name: parser.prog.removeprefix("laffi ") for name, parser in choices().items()
            if parser.prog != f"laffi {name}"}


def test_laffi_help_runs_in_a_fresh_process():
    # a fresh interpreter, as a user's shell starts it: nothing imported beforehand
    done = subprocess.run([sys.executable, "-m", "laffi.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: laffi" in done.stdout and "Traceback" not in done.stderr
    assert all(name in done.stdout for name in choices())
    assert "experiment (ablate)" in done.stdout  # the alias is listed beside its command


def test_laffi_version_is_the_installed_package_s(capsys):
    import importlib.metadata

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"laffi {importlib.metadata.version('laffi')}"


def test_the_cli_runs_from_sources_that_are_not_installed(monkeypatch, capsys):
    # the GPU check puts src/laffi on the path where its wheel is stale: no package metadata there
    import importlib.metadata

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    for argv in (["--help"], ["--version"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0
    assert capsys.readouterr().out.endswith("laffi (sources, not installed)\n")


@pytest.mark.parametrize("command", subcommands())
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: laffi " + command)


def test_ablate_is_an_alias_of_experiment(tmp_path, capsys):
    # `laffi ablate` became `laffi experiment`; the old name still answers, with the new command's help
    assert aliases() == {"ablate": "experiment"} and "ablate" not in subcommands()
    helps = []
    for command in ("experiment", "ablate"):
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        assert exited.value.code == 0
        helps.append(capsys.readouterr().out)
    assert helps[0].startswith("usage: laffi experiment ") and helps[1] == helps[0]
    # ...and runs it: the same plan, and nothing written by a dry run
    plans = []
    for command in ("experiment", "ablate"):
        assert main([command, "configs/experiments/equal-steps.yaml", "--out", str(tmp_path / "x"), "--dry-run",
                     "seeds=0,1"]) == 0
        plans.append(capsys.readouterr().out)
    assert plans[0].startswith("plan: 1 cell(s) x systems base, sft, laffi, laffi-aux-half x seeds 0, 1 x budgets 32")
    assert plans[1] == plans[0] and not (tmp_path / "x").exists()


def test_annotators_subcommands_have_help(capsys):
    for action in ("add", "list", "revoke"):
        with pytest.raises(SystemExit) as exited:
            main(["annotators", action, "--help"])
        assert exited.value.code == 0
    assert capsys.readouterr().out.count("usage: laffi annotators") == 3


@pytest.mark.parametrize("command", ["run", "experiment", "ablate"])
def test_a_yaml_syntax_error_is_a_one_line_error(command, tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("not: [valid\n")
    assert main([command, str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"laffi {command}: error: {path}:2:1: not valid YAML") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # nothing was started


def test_the_command_starts_without_loading_the_model_stack():
    # `laffi --help`, `laffi score` and the annotation app's commands need none of these; each command
    # imports its stages itself
    probe = ("import sys, laffi.cli; print(sorted(m for m in ('torch', 'transformers', 'peft', 'accelerate', "
             "'flask', 'sqlalchemy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_run_takes_overrides_after_a_flag(tmp_path, capsys):
    """`laffi run CONFIG --out X key=value`: the override after --out reaches the config (here, and
    invalid, it stops the run with its own name) instead of being an unrecognized argument."""
    assert main(["run", "configs/smollm2-cpu.yaml", "--out", str(tmp_path / "run"), "train.steps=0"]) == 2
    error = capsys.readouterr().err
    assert "train.steps" in error and "unrecognized" not in error
    assert not (tmp_path / "run").exists()


def test_user_mistakes_get_one_line_errors_that_name_the_fix(tmp_path, capsys, monkeypatch):
    from support.human_helpers import make_run

    def refused(*argv: str) -> str:
        assert main(list(argv)) == 2
        return capsys.readouterr().err

    not_a_dir = tmp_path / "file.json"
    not_a_dir.write_text("{}")
    assert "Not a directory" in refused("prepare", str(not_a_dir))  # an OSError: one line, no traceback
    assert "an experiment config (it has budgets, seeds); run it with `laffi experiment" in refused(
        "run", "configs/experiments/budgets.yaml")
    assert "annotate: a `laffi run` config's section; in an experiment config it goes under run:" in refused(
        "experiment", "configs/smollm2-cpu.yaml", "--dry-run")
    assert "run: expected a mapping" in refused("experiment", "configs/experiments/content.yaml", "--dry-run", "run=5")
    run = make_run(tmp_path / "run", n_items=4)
    assert "--system: 'laffi-aux-haf' is no system" in refused("train", str(run), "--system", "laffi-aux-haf")
    # a mistyped --db is not a new, empty database whose export would empty the last one
    exported = run / "feedback.human.jsonl"
    exported.write_text('{"keep": 1}\n')
    assert "--db: no annotation database at" in refused("export-feedback", str(run), "--db",
                                                        f"sqlite:///{run / 'annotation.db'}")
    assert exported.read_text() == '{"keep": 1}\n' and not (run / "annotation.db").exists()
    # an LLM server no request reaches: the run stops at the first request, naming the option to check, not
    # after every answer's retries with 0 feedback and exit 0
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    (run / "feedback.jsonl").unlink()
    error = refused("annotate", str(run), "annotate.annotator=llm", "annotate.base_url=http://127.0.0.1:9/v1",
                    "annotate.model=x", "annotate.retries=0", f"annotate.cache_dir={tmp_path / 'cache'}")
    assert "annotate.base_url: cannot connect to http://127.0.0.1:9/v1" in error and "Traceback" not in error
    (run / "answers.jsonl").unlink()  # so generate loads the model
    # offline, the hub's answer comes at once (asked over a network that blocks it, after about 50 s of retries);
    # the hub library reads the setting when it is imported, hence a process of its own
    import os

    offline = subprocess.run([sys.executable, "-m", "laffi.cli", "generate", str(run), "model.name=nosuch-org/nosuch-model"],
                             capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert offline.returncode == 2 and "model.name=nosuch-org/nosuch-model: " in offline.stderr


def test_run_on_a_directory_begun_with_other_settings_names_its_saved_config(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["prepare", str(run), "data.eval_size=8", "data.train_size=8", "data.dev_size=4"]) == 0
    capsys.readouterr()
    assert main(["run", "--out", str(run)]) == 2  # the default preset's sizes: not what the questions were drawn with
    err = capsys.readouterr().err
    assert "was written with different settings (data.eval_size" in err
    assert f"`laffi run {run / 'config.yaml'} --out {run}` goes on with them" in err


def test_a_closed_pipe_ends_the_command_without_an_error_message():
    # `laffi export-feedback RUN | head -1`: the reader went away; what was written stays, nothing to report
    code = ("import sys, laffi.cli as cli\n"
            "def dispatch(args):\n    raise BrokenPipeError(32, 'Broken pipe')\n"
            "cli._dispatch = dispatch\nsys.exit(cli.main(['score', 'data.json', 'pred.json']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr == ""
