"""Chat prompts: a conversation (a list of {"role", "content"} messages) turned into the text
a chat model was trained to continue.

Built-in templates (formats from the models' cards and published chat templates):

- minicpm:  <用户>{user}<AI>{assistant}<用户>{user}<AI>   (system text goes in front as is)
- chatml:   <|im_start|>{role}\\n{content}<|im_end|>\\n ... <|im_start|>assistant\\n
- llama-2:  [INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {assistant} </s><s>[INST] ...
- llama-3:  <|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|> ...
- zephyr:   <|{role}|>\\n{content}</s>\\n ... <|assistant|>\\n
- gemma:    <start_of_turn>user\\n{system}\\n\\n{user}<end_of_turn>\\n<start_of_turn>model\\n ...

A built-in template leaves the first BOS token to the tokenizer (Model.generate and
Model.chat add it when the model's file asks for one). A model's own template
(tokenizer.chat_template in its GGUF file) is Jinja2 source and is untrusted: it runs in
jinja2's immutable sandbox, and reaching for Python internals (attributes starting with "_",
mutating methods, ...) raises TemplateError, as does a render that runs too long or builds too
much (the bounds below). Where such a template writes the BOS text itself, the tokenizer does
not add another.
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime
import functools
import json
import re
import string
import time
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from .errors import TemplateError

BUILTIN_TEMPLATES = ("minicpm", "chatml", "llama-2", "llama-3", "zephyr", "gemma")
_ALIASES = {"llama2": "llama-2", "llama3": "llama-3"}

Message = Mapping[str, Any]
Conversation = Union[str, Sequence[Message]]

# End-of-turn texts that a template's source may contain; the model writes one when its turn
# is over (on top of the file's EOS token).
_END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                        "<|end_of_text|>", "<用户>")
# Bounds on a model's own (untrusted) template, each a TemplateError naming it. One value built
# with `*`: at most _MAX_REPEAT items; `**`: integers of at most _MAX_POWER_BITS bits. One render:
# at most _MAX_RENDER_SECONDS of wall time (checked at every loop step and call), and at most
# _MAX_BUILT characters (8 per list item) built in all by its string and list operations and
# its output, each operation checked before it builds anything large, so that what it holds
# stays within a few hundred MB. Real chat templates render in milliseconds and build a few
# times the conversation's text.
_MAX_REPEAT = 1 << 20
_MAX_POWER_BITS = 1 << 16
_MAX_RENDER_SECONDS = 2.0
_MAX_BUILT = 1 << 27

@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A resolved chat template: its name, how it renders, and what ends the model's turn."""
    name: str
    end_of_turn: tuple[str, ...]
    _render: Callable[[list[dict[str, Any]], bool], str] = dataclasses.field(repr=False)

    def render(self, conversation: Conversation, *, add_generation_prompt: bool = True) -> str:
        """The prompt text of `conversation` (a str is one user message)."""
        return self._render(_messages(conversation), bool(add_generation_prompt))


def format_prompt(
    text_or_messages: Conversation,
    template: str = "auto",
    *,
    model: Any = None,
    add_generation_prompt: bool = True,
) -> str:
    """Formats a conversation as the prompt text for a chat model.

    >>> format_prompt([{"role": "user", "content": "Hi"}], "minicpm")
    '<用户>Hi<AI>'

    Args:
        text_or_messages: a str (one user message) or a list of {"role": "system" | "user"
            | "assistant", "content": str} dicts, oldest first.
        template: "auto" (the model's own tokenizer.chat_template; without one, "minicpm"
            for MiniCPM files, "gemma" for Gemma files and "chatml" otherwise), "gguf" (the
            model's own template, which must exist), a built-in name (minicpm, chatml, llama-2,
            llama-3, zephyr, gemma), or Jinja2 source (rendered in the sandbox).
        model: a sparseinfer.Model, or a GGUF metadata dict (Model.metadata,
            read_gguf_info()["metadata"]); it supplies the template, the BOS/EOS texts and
            the family. Needed for "auto" and "gguf".
        add_generation_prompt: end with the header of the assistant's turn, so the model
            answers next.

    Raises TemplateError for an unknown template name, a template that fails or reaches for
    Python internals, and a template that refuses the conversation (raise_exception).
    """
    return resolve_template(template, model).render(
        text_or_messages, add_generation_prompt=add_generation_prompt)


def resolve_template(template: str, model: Any = None) -> ChatTemplate:
    """The ChatTemplate that `template` names for `model` (see format_prompt)."""
    if not isinstance(template, str):
        raise TypeError(f"template must be a str, got {type(template).__name__}")
    metadata = _metadata_of(model)
    bos, eos = _token_text(metadata, "bos"), _token_text(metadata, "eos")
    name = _ALIASES.get(template.lower(), template.lower())
    if name in ("auto", "gguf"):
        source = metadata.get("tokenizer.chat_template")
        if isinstance(source, str) and source.strip():
            return _jinja_template("gguf", source, bos=bos, eos=eos)
        if name == "gguf" or model is None:
            raise TemplateError(
                f"template={template!r} needs a model whose GGUF file has a "
                f"tokenizer.chat_template" + ("" if model is not None else "; pass model=...")
                + f"; or name a built-in template: {', '.join(BUILTIN_TEMPLATES)}")
        name = "minicpm" if _is_minicpm(metadata) else "gemma" if _is_gemma(metadata) else "chatml"
    if name in _BUILTINS:
        return _BUILTINS[name](bos or "<s>", eos or "</s>")
    if "{{" in template or "{%" in template:
        return _jinja_template("jinja", template, bos=bos, eos=eos)
    raise TemplateError(f"unknown chat template {template!r}: use 'auto', 'gguf', one of "
                        f"{', '.join(BUILTIN_TEMPLATES)}, or Jinja2 source")


# ---- model facts ------------------------------------------------------------------------------

def _metadata_of(model: Any) -> Mapping[str, Any]:
    if model is None:
        return {}
    if isinstance(model, Mapping):
        return model
    metadata = getattr(model, "metadata", None)
    if isinstance(metadata, Mapping):
        return metadata
    raise TypeError(f"model must be a sparseinfer.Model or a GGUF metadata dict, "
                    f"got {type(model).__name__}")


def _token_text(metadata: Mapping[str, Any], which: str) -> str:
    tokens = metadata.get("tokenizer.ggml.tokens")
    token_id = metadata.get(f"tokenizer.ggml.{which}_token_id")
    if (isinstance(tokens, (list, tuple)) and isinstance(token_id, int)
            and 0 <= token_id < len(tokens)):
        return str(tokens[token_id])
    return ""


def _is_minicpm(metadata: Mapping[str, Any]) -> bool:
    """MiniCPM files: the name says so, or the vocabulary has MiniCPM's turn token <用户>
    (PowerInfer's MiniCPM-S file declares the llama architecture)."""
    for key in ("general.name", "general.basename", "general.architecture"):
        value = metadata.get(key)
        if isinstance(value, str) and "minicpm" in value.lower():
            return True
    tokens = metadata.get("tokenizer.ggml.tokens")
    return isinstance(tokens, (list, tuple)) and "<用户>" in tokens


def _is_gemma(metadata: Mapping[str, Any]) -> bool:
    """Gemma files: the architecture says so (gemma, gemma2, gemma3, ...), or the vocabulary
    has Gemma's turn token <start_of_turn>."""
    architecture = metadata.get("general.architecture")
    if isinstance(architecture, str) and architecture.lower().startswith("gemma"):
        return True
    tokens = metadata.get("tokenizer.ggml.tokens")
    return isinstance(tokens, (list, tuple)) and "<start_of_turn>" in tokens


# ---- messages ---------------------------------------------------------------------------------

def _messages(conversation: Conversation) -> list[dict[str, Any]]:
    """Plain dict copies of the messages, checked: every one has a str role and content."""
    if isinstance(conversation, str):
        return [{"role": "user", "content": conversation}]
    if isinstance(conversation, Mapping) or not isinstance(conversation, Sequence):
        raise TypeError("messages must be a str or a list of {'role': ..., 'content': ...} "
                        f"dicts, got {type(conversation).__name__}")
    messages = []
    for i, message in enumerate(conversation):
        if not isinstance(message, Mapping):
            raise TypeError(f"messages[{i}] must be a dict with 'role' and 'content', "
                            f"got {type(message).__name__}")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise TypeError(f"messages[{i}][{key!r}] must be a str, "
                                f"got {message.get(key)!r}")
        messages.append(dict(message))
    return messages


# ---- built-in templates -----------------------------------------------------------------------

def _minicpm(bos: str, eos: str) -> ChatTemplate:
    def render(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        # MiniCPM's template has no separate generation prompt: "<AI>" ends every user turn.
        return "".join("<用户>" + m["content"].strip() + "<AI>" if m["role"] == "user"
                       else m["content"].strip() for m in messages)
    return ChatTemplate("minicpm", ("<用户>", eos), render)


def _chatml(bos: str, eos: str) -> ChatTemplate:
    def render(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")
    return ChatTemplate("chatml", ("<|im_end|>",), render)


def _llama2(bos: str, eos: str) -> ChatTemplate:
    def render(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        # System text joins the next user message; every user turn after the first starts
        # with BOS, every assistant turn ends with EOS (Llama-2-chat's format). The
        # [/INST] that ends a user turn is the generation prompt.
        text, system, first = "", "", True
        for m in messages:
            if m["role"] == "system":
                system += m["content"]
            elif m["role"] == "user":
                content = m["content"]
                if system:
                    content, system = f"<<SYS>>\n{system}\n<</SYS>>\n\n{content}", ""
                text += ("" if first else bos) + f"[INST] {content.strip()} [/INST]"
                first = False
            else:
                text += f" {m['content'].strip()} {eos}"
        return text
    return ChatTemplate("llama-2", (eos,), render)


def _llama3(bos: str, eos: str) -> ChatTemplate:
    def render(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        text = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n"
                       f"{m['content'].strip()}<|eot_id|>" for m in messages)
        return text + ("<|start_header_id|>assistant<|end_header_id|>\n\n"
                       if add_generation_prompt else "")
    return ChatTemplate("llama-3", ("<|eot_id|>",), render)


def _zephyr(bos: str, eos: str) -> ChatTemplate:
    def render(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        text = "".join(f"<|{m['role']}|>\n{m['content']}{eos}\n" for m in messages)
        return text + ("<|assistant|>\n" if add_generation_prompt else "")
    return ChatTemplate("zephyr", (eos,), render)


def _gemma(bos: str, eos: str) -> ChatTemplate:
    def render(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        # As Gemma 3's published template: a leading system message goes, with a blank line,
        # in front of the first turn's text; "assistant" is "model"; the text of every turn
        # trimmed (llama.cpp's built-in gemma format writes the same).
        prefix = ""
        if messages and messages[0]["role"] == "system":
            prefix, messages = messages[0]["content"] + "\n\n", messages[1:]
        text = ""
        for i, m in enumerate(messages):
            role = "model" if m["role"] == "assistant" else m["role"]
            text += f"<start_of_turn>{role}\n{prefix if i == 0 else ''}{m['content'].strip()}<end_of_turn>\n"
        return text + ("<start_of_turn>model\n" if add_generation_prompt else "")
    return ChatTemplate("gemma", ("<end_of_turn>", eos), render)


_BUILTINS: dict[str, Callable[[str, str], ChatTemplate]] = {
    "minicpm": _minicpm, "chatml": _chatml, "llama-2": _llama2, "llama-3": _llama3,
    "zephyr": _zephyr, "gemma": _gemma,
}


# ---- Jinja2 templates in a sandbox -------------------------------------------------------------

def _jinja_template(name: str, source: str, *, bos: str, eos: str) -> ChatTemplate:
    compiled = _compile(source)
    end_of_turn = tuple(m for m in _END_OF_TURN_MARKERS if m in source and m != eos)
    end_of_turn += (eos,) if eos else ()

    def render(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        budget = _RenderBudget()
        token = _render_budget.set(budget)
        try:
            # every {{ }} value is charged by the environment's finalize; the template's own
            # text is bounded by its source
            return compiled.render(messages=messages, bos_token=bos, eos_token=eos,
                                   add_generation_prompt=add_generation_prompt)
        except TemplateError:
            raise
        except Exception as error:  # noqa: BLE001 - untrusted code: every failure is its own
            raise _template_error(error) from error
        finally:
            _render_budget.reset(token)
    return ChatTemplate(name, end_of_turn, render)


class _RenderBudget:
    """What one render may still spend: wall time and characters or items built."""

    def __init__(self) -> None:
        self.deadline = time.monotonic() + _MAX_RENDER_SECONDS
        self.built = 0

    def step(self) -> None:
        if time.monotonic() > self.deadline:
            _refuse(f"a chat template may run for at most {_MAX_RENDER_SECONDS:g} s")

    def charge(self, items: int, what: str) -> None:
        self.built += items
        if self.built > _MAX_BUILT:
            _refuse(f"a chat template may build at most {_MAX_BUILT} characters (8 per list item) "
                    f"in all ({what} went past it)")
        self.step()


# The render under way in this thread (or task): the compiled templates and their environment
# are shared, so their bounds are kept here.
_render_budget: contextvars.ContextVar[_RenderBudget] = contextvars.ContextVar("_render_budget")


def _budget() -> _RenderBudget:
    # Outside a render (jinja2 folding constants at compile time) each operation gets its own.
    budget = _render_budget.get(None)
    return budget if budget is not None else _RenderBudget()


def _refuse(message: str) -> None:
    import jinja2.sandbox

    raise jinja2.sandbox.SecurityError(message)


def _sized(value: Any) -> int:
    """What a value holds against _MAX_BUILT: its characters, or 8 per item of a list, tuple
    or dict (a pointer each)."""
    if isinstance(value, str):
        return len(value)
    return 8 * len(value) if isinstance(value, (list, tuple, dict)) else 0


def _text_size(value: Any) -> int:
    """About how many characters str() of a value builds: a string's own, a container's items'
    (walked, each item at least a few characters, until the total passes _MAX_BUILT), so that
    printing [s] * 100000 is refused before it is built."""
    total, pending = 0, [value]
    while pending and total <= _MAX_BUILT:
        item = pending.pop()
        if isinstance(item, str):
            total += len(item) + 4
        elif isinstance(item, dict):
            total += 4 * len(item) + 2
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += 2 * len(item) + 2
            pending.extend(item)
        elif type(item).__name__ == "Namespace":  # jinja2's: printed with its attributes
            pending.append(dict(getattr(item, "_Namespace__attrs", {})))
        else:
            total += 32
    return total


def _joined_size(items: list, separator: str) -> int:
    """About how many characters joining `items` with `separator` builds (also a sum's items)."""
    return sum(_text_size(v) for v in items) + len(items) * len(separator)


def _charge_result(value: Any, what: str) -> Any:
    _budget().charge(_sized(value), what)
    return value


def _check_size(items: int, what: str) -> None:
    """Refuses an operation whose result would hold `items` before it is built."""
    budget = _budget()
    if budget.built + items > _MAX_BUILT:
        budget.charge(items, what)


def _charged_output(value: Any) -> Any:
    """The environment's finalize: each {{ }} value, in the output or in a {% set %} block,
    charged before it is turned into text."""
    _budget().charge(_text_size(value), "its output")
    return value


# printf-style conversions ('%-10.3f', '%(name)s', '%*d') and digit runs in str.format specs.
_PRINTF_FIELD = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[diouxXeEfFgGcrsa%]")
_DIGITS = re.compile(r"\d+")


def _check_format_fields(fmt: str, what: str, *, printf: bool) -> None:
    """Refuses widths and precisions that would build a huge string from a small one, and
    widths taken from the arguments ('%*s', '{:{width}}'), which chat templates do not need."""
    if printf:
        numbers = [n for field in _PRINTF_FIELD.findall(fmt) for n in field if n]
    else:
        numbers = []
        for _, _, spec, _ in string.Formatter().parse(fmt):
            if spec and "{" in spec:
                numbers.append("*")
            numbers.extend(_DIGITS.findall(spec or ""))
    for number in numbers:
        if number == "*":
            _refuse(f"a chat template may not take a width or precision from the arguments ({what})")
        if len(number) > 7 or int(number) > _MAX_REPEAT:
            _refuse(f"a chat template may not pad or format a value to more than {_MAX_REPEAT} "
                    f"characters ({what})")


# Filters whose output may be several times their input per character (escapes).
_ESCAPING_FILTERS = frozenset({"escape", "e", "forceescape", "urlencode", "urlize", "xmlattr"})


def _estimated_growth(name: str, text: str, args: tuple, kwargs: dict) -> int:
    """Characters a string method or filter of this name would build from `text`."""
    def number(index: int, key: str, default: int = 0) -> int:
        value = args[index] if len(args) > index else kwargs.get(key)
        return value if isinstance(value, int) else default

    def length(index: int, key: str) -> int:  # of a text argument, without building it
        value = args[index] if len(args) > index else kwargs.get(key, "")
        return len(value) if isinstance(value, str) else _text_size(value)

    if name in ("center", "ljust", "rjust", "zfill"):
        return max(number(0, "width"), len(text))
    if name == "indent":
        return len(text) + (text.count("\n") + 1) * max(number(0, "width", 4), length(0, "width"))
    if name == "expandtabs":
        return len(text) + text.count("\t") * max(number(0, "tabsize", 8), 0)
    if name == "replace":
        old, new = args[0] if args else kwargs.get("old", ""), length(1, "new")
        old = old if isinstance(old, str) else ""
        count = text.count(old) if old else len(text) + 1
        limit = number(2, "count", -1)
        if limit >= 0:
            count = min(count, limit)
        return len(text) + count * max(new - len(old), 0)
    if name == "wordwrap":
        if len(text) > _MAX_REPEAT:  # textwrap is pure Python: slow on tens of MB
            _refuse(f"a chat template may not wrap more than {_MAX_REPEAT} characters")
        width = max(number(0, "width", 79), 1)
        return len(text) + (len(text) // width + 1) * length(2, "wrapstring")
    if name in _ESCAPING_FILTERS:
        return 9 * len(text)
    return len(text)


_GROWING_STRING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join"})


def _bounded_filter(name: str, jinja_filter: Callable[..., Any]) -> Callable[..., Any]:
    """A jinja2 filter that checks what it would build first and charges what it built."""
    takes_context = getattr(jinja_filter, "jinja_pass_arg", None)

    def bounded(*call_args: Any, **kwargs: Any) -> Any:
        args = call_args[1:] if takes_context is not None else call_args
        value, rest = (args[0], args[1:]) if args else (None, ())
        what = f"the {name} filter"
        if name in ("join", "sum") and value is not None:
            value = list(value)  # a bounded list: its items are counted below
            if name == "sum":
                start = rest[1] if len(rest) > 1 else kwargs.get("start", 0)
                if not isinstance(start, (int, float)):
                    _refuse("a chat template may only sum numbers")
            separator = rest[0] if name == "join" and rest and isinstance(rest[0], str) else ""
            _check_size(_joined_size(value, separator), what)
            call_args = call_args[:len(call_args) - len(args)] + (value,) + tuple(rest)
        elif isinstance(value, str):
            if name == "format":
                _check_format_fields(value, what, printf=True)
            _check_size(_estimated_growth(name, value, rest, kwargs), what)
        elif name in ("string", "pprint", "tojson", "list", "urlencode", "xmlattr"):
            _check_size(_text_size(value), what)
        if name == "tojson":
            indent = rest[0] if rest else kwargs.get("indent")
            separators = rest[1] if len(rest) > 1 else kwargs.get("separators")
            if (isinstance(indent, int) and indent > 64 or isinstance(indent, str) and len(indent) > 64
                    or separators is not None and _text_size(separators) > 64):
                _refuse("a chat template may indent or separate JSON by at most 64 characters")
        return _charge_result(jinja_filter(*call_args, **kwargs), what)

    if takes_context is not None:  # jinja2 passes the context, environment or eval context first
        bounded.jinja_pass_arg = takes_context  # type: ignore[attr-defined]
    return bounded


@functools.lru_cache(maxsize=16)
def _compile(source: str) -> Any:
    env = _sandbox()
    try:
        return env.from_string(_bound_loops().visit(env.parse(source)))
    except Exception as error:  # noqa: BLE001 - syntax errors and whatever else the source does
        raise _template_error(error) from error


def _template_error(error: Exception) -> TemplateError:
    import jinja2.sandbox

    if isinstance(error, jinja2.sandbox.SecurityError):
        return TemplateError(f"the chat template was stopped by the sandbox: {error}")
    if isinstance(error, jinja2.TemplateSyntaxError):
        return TemplateError(f"the chat template has a syntax error on line {error.lineno}: "
                             f"{error.message}")
    if isinstance(error, MemoryError):
        return TemplateError("the chat template ran out of memory")
    return TemplateError(f"the chat template failed: {type(error).__name__}: {error}")


@functools.lru_cache(maxsize=1)
def _bound_loops() -> Any:
    """A jinja2 syntax-tree transformer that routes every for loop's items and every `~`
    through the environment (where a template cannot shadow them), so that each loop step
    and concatenation is counted."""
    import jinja2.nodes as nodes
    import jinja2.visitor

    class BoundLoops(jinja2.visitor.NodeTransformer):
        def visit_For(self, node: Any) -> Any:
            node = self.generic_visit(node)
            node.iter = nodes.Call(nodes.EnvironmentAttribute("si_loop_items"), [node.iter], [], None, None,
                                   lineno=node.lineno)
            return node

        def visit_Concat(self, node: Any) -> Any:
            node = self.generic_visit(node)
            return nodes.Call(nodes.EnvironmentAttribute("si_concat"), [nodes.List(node.nodes)], [], None, None,
                              lineno=node.lineno)

    return BoundLoops()


def _sandbox() -> Any:
    """jinja2's immutable sandbox, stricter: an unsafe attribute raises at once (the stock
    sandbox returns an undefined value that renders as ""), and a render is bounded in time
    and in what it builds (_MAX_* above). Settings and helpers as chat templates expect them
    (trim_blocks, lstrip_blocks, loop controls, raise_exception, strftime_now, a tojson that
    keeps non-ASCII text)."""
    import jinja2.ext
    import jinja2.sandbox

    class Sandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "%", "+"})

        def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
            raise jinja2.sandbox.SecurityError(
                f"access to attribute {attribute!r} of a {type(obj).__name__} object is not "
                f"allowed in a chat template")

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if (isinstance(seq, (str, list, tuple)) and isinstance(n, int)
                            and len(seq) * n > _MAX_REPEAT):
                        _refuse(f"a chat template may not build a value of more than {_MAX_REPEAT} items with '*'")
            elif (operator == "**" and isinstance(left, int) and isinstance(right, int)
                  and right > 0 and abs(left) > 1
                  and right * abs(left).bit_length() > _MAX_POWER_BITS):
                _refuse(f"a chat template may not compute integers of more than {_MAX_POWER_BITS} bits with '**'")
            elif operator == "%" and isinstance(left, str):
                _check_format_fields(left, "'%' formatting", printf=True)
                _check_size(len(left) + _text_size(right), "'%' formatting")
            elif operator == "+":
                _check_size(_sized(left) + _sized(right), "'+'")
            return _charge_result(super().call_binop(context, operator, left, right), f"'{operator}'")

        def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
            # bytes would escape every bound on text (and chat templates have no use for them)
            if isinstance(obj, str) and attr in ("encode", "translate", "maketrans"):
                return False
            return super().is_safe_attribute(obj, attr, value)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            _budget().step()
            if __obj is Sandbox.si_concat:  # charges what it builds itself
                return super().call(__context, __obj, *args, **kwargs)
            owner = getattr(__obj, "__self__", None)
            name = getattr(__obj, "__name__", "")
            if isinstance(owner, str) and name in _GROWING_STRING_METHODS:
                what = f"str.{name}"
                if name == "join" and args:
                    items = list(args[0])
                    _check_size(_joined_size(items, owner), what)
                    args = (items,) + args[1:]
                else:
                    _check_size(_estimated_growth(name, owner, args, kwargs), what)
            return _charge_result(super().call(__context, __obj, *args, **kwargs), "a call")

        def wrap_str_format(self, value: Any) -> Any:
            # str.format and format_map, which the sandbox wraps when they are looked up
            sandboxed = super().wrap_str_format(value)
            if sandboxed is None:
                return None
            what = f"str.{value.__name__}"

            def bounded(*args: Any, **kwargs: Any) -> Any:
                _check_format_fields(value.__self__, what, printf=False)
                _check_size(len(value.__self__) + _text_size(args) + _text_size(kwargs), what)
                return sandboxed(*args, **kwargs)
            return bounded

        @staticmethod
        def si_loop_items(items: Any) -> Any:
            budget = _budget()
            for item in items:
                budget.step()
                yield item

        @staticmethod
        def si_concat(values: list) -> str:
            _check_size(sum(_text_size(v) for v in values), "'~'")
            return _charge_result("".join(v if isinstance(v, str) else str(v) for v in values), "'~'")

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols],
                  finalize=_charged_output)
    env.globals["lipsum"] = _no_lipsum  # jinja2's is a pure-Python loop of any length, in one call
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    for name in list(env.filters):  # filters bypass call(): each checks and charges itself
        env.filters[name] = _bounded_filter(name, env.filters[name])
    return env


def _no_lipsum(*args: Any, **kwargs: Any) -> None:
    _refuse("a chat template may not call lipsum")


def _raise_exception(message: str) -> None:
    raise TemplateError(f"the chat template refused the conversation: {message}")


def _strftime_now(format: str) -> str:
    return datetime.datetime.now().strftime(format)


def _tojson(value: Any, indent: Optional[int] = None, separators: Any = None,
            sort_keys: bool = False, ensure_ascii: bool = False) -> str:
    return json.dumps(value, indent=indent, separators=separators, sort_keys=sort_keys,
                      ensure_ascii=ensure_ascii)
