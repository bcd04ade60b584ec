"""Model.chat and the `chat` command.

Oracles: llama-cpp-python's greedy decoding of the same prompt tokens, stopped by its own
end-of-generation token (SmolLM2's <|im_end|>); for the command line, Model.chat on the same
conversation (the REPL must feed the model the conversation the user typed, history included).
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import sys
import termios
import time
from typing import Iterator

import pytest

import sparseinfer as si

import ggufgen
from smollm2 import llama_greedy, smollm2_path

N_THREADS = 2


@pytest.fixture(scope="module")
def smollm2():
    with si.Model(smollm2_path(), n_ctx=512, n_threads=N_THREADS) as model:
        yield model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-weight model whose greedy reply to "hello there" runs for thousands of tokens
    without an end-of-generation token (checked in the pty test)."""
    path = tmp_path_factory.mktemp("models") / "tiny.gguf"
    return ggufgen.write_llama_model(path, n_vocab=300, n_embd=32, n_layer=2, n_head=4,
                                     n_head_kv=2, n_ff=48, n_ctx=8192, seed=1).path


@pytest.fixture(scope="module")
def llm(smollm2):
    llama_cpp = pytest.importorskip("llama_cpp")
    oracle = llama_cpp.Llama(model_path=smollm2.path, n_ctx=512, n_threads=N_THREADS,
                             logits_all=True, verbose=False)
    yield oracle
    oracle.close()


def llama_greedy_reply(llm, prompt: str, max_tokens: int) -> str:
    """llama.cpp's greedy continuation of `prompt` (special tokens parsed, no BOS added:
    SmolLM2's file asks for none), up to its end-of-generation token."""
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    return llm.detokenize(llama_greedy(llm, tokens, max_tokens)).decode("utf-8", errors="replace")


@pytest.mark.parametrize("question", ["Hi!", "What is 2+2?"])
def test_chat_on_smollm2_stops_at_the_end_of_its_turn(smollm2, llm, question):
    messages = [{"role": "user", "content": question}]
    reply = smollm2.chat(messages, temperature=0, max_tokens=64)
    assert reply and "<|im_end|>" not in reply and "<|im_start|>" not in reply
    assert smollm2.stats()["generated_tokens"] < 64  # ended by the model, not by the limit
    prompt = si.format_prompt(messages, model=smollm2)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert reply == llama_greedy_reply(llm, prompt, 64)
    assert "".join(smollm2.chat(messages, temperature=0, max_tokens=64, stream=True)) == reply


def test_chat_keeps_the_history_and_takes_a_template(smollm2, llm):
    history = [{"role": "user", "content": "Hi!"},
               {"role": "assistant", "content": "Hello! How can I assist you today?"},
               {"role": "user", "content": "What is 2+2?"}]
    reply = smollm2.chat(history, temperature=0, max_tokens=64)
    prompt = si.format_prompt(history, model=smollm2)
    assert reply == llama_greedy_reply(llm, prompt, 64)
    # a built-in template by name gives that template's prompt: here ChatML without SmolLM2's
    # default system message
    question = history[-1:]
    chatml = si.format_prompt(question, "chatml")
    assert chatml != si.format_prompt(question, model=smollm2)
    assert smollm2.chat(question, template="chatml", temperature=0, max_tokens=64) == \
        llama_greedy_reply(llm, chatml, 64)
    with pytest.raises(si.TemplateError):
        smollm2.chat(history, template="no-such-template")


def run_chat(model: str, stdin: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparseinfer", "chat", "-m", model, "-t", "1",
                           *args], input=stdin.encode("utf-8"), capture_output=True,
                          timeout=120)


def test_chat_command_reads_a_conversation_from_a_pipe(tiny):
    result = run_chat(tiny, "hello there\nsecond \\\nline\n\n", "-n", "8", "--temp", "0",
                      "-c", "256", "--system", "be brief")
    assert result.returncode == 0, result.stderr.decode()
    with si.Model(tiny, n_ctx=256, n_threads=1) as model:
        messages = [{"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hello there"}]
        first = model.chat(messages, temperature=0, max_tokens=8)
        messages += [{"role": "assistant", "content": first},
                     {"role": "user", "content": "second \nline"}]  # "\" joins the lines
        second = model.chat(messages, temperature=0, max_tokens=8)
    assert result.stdout.decode("utf-8") == first + "\n" + second + "\n"


def test_chat_command_stats_say_what_the_context_kept(tiny):
    result = run_chat(tiny, "hello there\nand again\n", "-n", "6", "--temp", "0", "-c", "256",
                      "--stats")
    assert result.returncode == 0, result.stderr.decode()
    prompts = [line for line in result.stderr.decode("utf-8").splitlines() if line.startswith("prompt:")]
    assert len(prompts) == 2
    assert "already in the context" not in prompts[0]
    with si.Model(tiny, n_ctx=256, n_threads=1) as model:  # the same two turns through the API
        messages = [{"role": "user", "content": "hello there"}]
        messages += [{"role": "assistant", "content": model.chat(messages, temperature=0, max_tokens=6)},
                     {"role": "user", "content": "and again"}]
        model.chat(messages, temperature=0, max_tokens=6)
        stats = model.stats()
    assert f"prompt:    {stats['prompt_tokens']} tokens ({stats['reused_tokens']} already in the context)" \
        in prompts[1]
    assert stats["reused_tokens"] > 0


def test_chat_command_goes_on_when_the_context_fills(tiny):
    # The tiny model's replies run until the context is full: the first is cut (and says so),
    # the next message then drops the oldest turn, keeps the system message, and is answered.
    result = run_chat(tiny, "hello there\nand again\n", "--temp", "0", "-c", "128", "--system", "be brief")
    assert result.returncode == 0, result.stderr.decode()
    err = result.stderr.decode("utf-8")
    assert err.count("the reply was cut: the context (128 tokens) is full; the next message drops the oldest "
                     "turns") == 2, err
    assert "the context is full: dropped the 2 oldest messages" in err
    replies = result.stdout.decode("utf-8").split("\n")
    with si.Model(tiny, n_ctx=128, n_threads=1) as model:  # what the second reply must be
        second = model.chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": "and again"}],
                            temperature=0)
    assert replies[1] == second and len(second) > 0


def test_chat_command_keep_history_refuses_what_does_not_fit(tiny):
    result = run_chat(tiny, "hello there\nand again\n", "--temp", "0", "-c", "128", "--keep-history")
    assert result.returncode == 0, result.stderr.decode()
    err = result.stderr.decode("utf-8")
    assert "the reply was cut: the context (128 tokens) is full\n" in err
    assert "no room left to generate" in err and "this message was dropped" in err


def test_chat_command_on_smollm2(smollm2):
    result = run_chat(smollm2.path, "Hi!\nWhat is 2+2?\n", "-n", "64", "--temp", "0", "-c", "512")
    assert result.returncode == 0, result.stderr.decode()
    history = [{"role": "user", "content": "Hi!"}]
    first = smollm2.chat(history, temperature=0, max_tokens=64)
    history += [{"role": "assistant", "content": first},
                {"role": "user", "content": "What is 2+2?"}]
    second = smollm2.chat(history, temperature=0, max_tokens=64)
    assert result.stdout.decode("utf-8") == f"{first}\n{second}\n"


def test_chat_command_rejects_an_unknown_template(tiny):
    result = run_chat(tiny, "hi\n", "--chat-template", "nope")
    assert result.returncode == 1
    assert b"unknown chat template 'nope'" in result.stderr


def read_pty(fd: int, buffer: bytearray, done, timeout: float = 30) -> None:
    """Reads from the pty into `buffer` until done(buffer) holds."""
    deadline = time.monotonic() + timeout
    while not done(buffer):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; the terminal shows {bytes(buffer)[-500:]!r}")
        if select.select([fd], [], [], 0.1)[0]:
            try:
                buffer += os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                raise AssertionError(f"the command ended; it showed {bytes(buffer)!r}") from None


def write_pty(fd: int, data: bytes, buffer: bytearray, timeout: float = 60) -> None:
    """Writes all of `data` to the pty, reading what the command shows meanwhile (its echo
    would otherwise fill the terminal and stop it reading)."""
    deadline = time.monotonic() + timeout
    os.set_blocking(fd, False)  # a blocking write could wait for a command that waits for us
    try:
        while data:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out writing; the terminal shows {bytes(buffer)[-500:]!r}")
            readable, writable, _ = select.select([fd], [fd], [], 0.1)
            if readable:
                try:
                    buffer += os.read(fd, 65536)
                except BlockingIOError:
                    pass
            if writable:
                try:
                    data = data[os.write(fd, data[:1024]):]
                except BlockingIOError:
                    pass
    finally:
        os.set_blocking(fd, True)


@contextlib.contextmanager
def chat_in_a_terminal(model_path: str, *args: str) -> Iterator[int]:
    """The chat command in a new pty, as in a terminal: yields the terminal's fd. On leaving
    (the command at its prompt) Ctrl-D ends it, which must exit with status 0."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the chat command, with the pty as its terminal
        # Ctrl-C as in a terminal, even where this suite runs with SIGINT ignored (a
        # background job of a script): an ignored SIGINT stays ignored across exec.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execv(sys.executable, [sys.executable, "-m", "sparseinfer", "chat", "-m", model_path, *args])
        os._exit(127)
    try:
        yield fd
        os.write(fd, b"\x04")  # Ctrl-D at an empty prompt
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)


def test_chat_in_a_terminal_takes_a_long_pasted_line_whole(tiny):
    # A terminal's line discipline keeps 4095 bytes of a line; readline reads the keys raw.
    message = " ".join(["hello there"] * 500)  # 6 KB, about a token a byte in this vocabulary
    assert len(message) > 4095
    with si.Model(tiny, n_ctx=8192, n_threads=1) as model:
        model.chat(message, temperature=0, max_tokens=1)
        want = model.stats()["prompt_tokens"]
    out = bytearray()
    with chat_in_a_terminal(tiny, "-c", "8192", "-t", "1", "--temp", "0", "-n", "1", "--stats") as fd:
        read_pty(fd, out, lambda b: b"> " in b)
        write_pty(fd, message.encode() + b"\r", out)
        # Ctrl-D only at the next prompt: earlier, readline could miss it.
        read_pty(fd, out, lambda b: re.search(rb"prompt: +\d+ tokens[^>]*\n> ", b) is not None, timeout=120)
    got = int(re.search(rb"prompt: +(\d+) tokens", out).group(1))
    assert got == want  # the whole message reached the model


def test_chat_in_a_terminal_ctrl_c_stops_the_reply_and_ctrl_d_quits(tiny):
    with si.Model(tiny, n_ctx=8192, n_threads=1) as model:
        full = model.chat("hello there", temperature=0)
        assert model.stats()["generated_tokens"] > 4000  # long enough to be interrupted
    with chat_in_a_terminal(tiny, "-c", "8192", "-t", "1", "--temp", "0") as fd:
        # no echo of what we type, no "\n" -> "\r\n": the output is what the command wrote
        attrs = termios.tcgetattr(fd)
        attrs[1] &= ~termios.OPOST
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        out = bytearray()
        read_pty(fd, out, lambda b: b"> " in b)
        start = out.index(b"> ") + 2
        os.write(fd, b"hello there\n")
        read_pty(fd, out, lambda b: len(b) > start)  # the reply has begun to stream
        os.write(fd, b"\x03")  # Ctrl-C
        read_pty(fd, out, lambda b: b.find(b"\n> ", start) >= 0)  # and a new prompt
        end = out.find(b"\n> ", start)
    interrupted = out[start:end].decode("utf-8", errors="replace")
    assert interrupted and full.startswith(interrupted) and len(interrupted) < len(full)
