"""Chat prompt formatting.

Oracles: the formats as the model cards publish them, written out by hand; the models' own
published chat templates rendered by plain jinja2 outside any sandbox (the way Hugging Face
transformers renders them: trim_blocks, lstrip_blocks); and SmolLM2's real template from its
GGUF file, likewise. Hostile templates must raise TemplateError, never render.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jinja2
import jinja2.ext
import pytest

import sparseinfer as si
from sparseinfer import _core
from sparseinfer.errors import TemplateError
from sparseinfer.prompt import BUILTIN_TEMPLATES, resolve_template

import ggufgen
from smollm2 import smollm2_path

# The conversation of llama.cpp's chat-template test (note the spaces around one reply).
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant"},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there"},
    {"role": "user", "content": "Who are you"},
    {"role": "assistant", "content": "   I am an assistant   "},
    {"role": "user", "content": "Another question"},
]

# The formats, written out from the model cards. Built-in templates leave the first BOS to the
# tokenizer, so none starts with "<s>".
EXPECTED = {
    "chatml": "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
              "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nHi there<|im_end|>\n"
              "<|im_start|>user\nWho are you<|im_end|>\n"
              "<|im_start|>assistant\n   I am an assistant   <|im_end|>\n"
              "<|im_start|>user\nAnother question<|im_end|>\n<|im_start|>assistant\n",
    "minicpm": "You are a helpful assistant<用户>Hello<AI>Hi there<用户>Who are you<AI>"
               "I am an assistant<用户>Another question<AI>",
    "llama-2": "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST] Hi there "
               "</s><s>[INST] Who are you [/INST] I am an assistant </s><s>[INST] Another "
               "question [/INST]",
    "llama-3": "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant"
               "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nI am an assistant<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nAnother question<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "zephyr": "<|system|>\nYou are a helpful assistant</s>\n<|user|>\nHello</s>\n"
              "<|assistant|>\nHi there</s>\n<|user|>\nWho are you</s>\n"
              "<|assistant|>\n   I am an assistant   </s>\n<|user|>\nAnother question</s>\n"
              "<|assistant|>\n",
    "gemma": "<start_of_turn>user\nYou are a helpful assistant\n\nHello<end_of_turn>\n"
             "<start_of_turn>model\nHi there<end_of_turn>\n<start_of_turn>user\nWho are you<end_of_turn>\n"
             "<start_of_turn>model\nI am an assistant<end_of_turn>\n"
             "<start_of_turn>user\nAnother question<end_of_turn>\n<start_of_turn>model\n",
}

# The models' own published chat templates (tokenizer_config.json of MiniCPM-2B-sft,
# OpenHermes-2.5 (ChatML), Llama-2-7b-chat, Meta-Llama-3-8B-Instruct, zephyr-7b-beta and
# gemma-3-it, the last without its branch for image content, which text messages never take).
PUBLISHED = {
    "minicpm": "{% for message in messages %}{% if message['role'] == 'user' %}{{'<用户>' + "
               "message['content'].strip() + '<AI>'}}{% else %}{{message['content'].strip()}}"
               "{% endif %}{% endfor %}",
    "chatml": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
              "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt"
              " %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "llama-2": "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
               "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages"
               " = messages %}{% set system_message = false %}{% endif %}{% for message in "
               "loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
               "{{ raise_exception('Conversation roles must alternate user/assistant/user/"
               "assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false"
               " %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + "
               "message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
               "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + "
               "' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip()"
               " + ' ' + eos_token }}{% endif %}{% endfor %}",
    "llama-3": "{% set loop_messages = messages %}{% for message in loop_messages %}{% set "
               "content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ "
               "message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set "
               "content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if "
               "add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
               "{% endif %}",
    "zephyr": "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n'"
              " + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ "
              "'<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == "
              "'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
              "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n"
              "{% endif %}\n{% endfor %}",
    "gemma": "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- if messages[0]['content'] is "
             "string -%}\n        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n    {%- else -%}\n"
             "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n    {%- endif -%}\n"
             "    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = \"\" -%}\n"
             "    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n"
             "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n        {{ raise_exception("
             "\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n    {%- endif -%}\n"
             "    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n    {%- else -%}\n"
             "        {%- set role = message['role'] -%}\n    {%- endif -%}\n    {{ '<start_of_turn>' + role + '\n' + "
             "(first_user_prefix if loop.first else \"\") }}\n    {%- if message['content'] is string -%}\n"
             "        {{ message['content'] | trim }}\n    {%- else -%}\n        {{ raise_exception(\"Invalid content "
             "type\") }}\n    {%- endif -%}\n    {{ '<end_of_turn>\n' }}\n{%- endfor -%}\n{%- if add_generation_prompt "
             "-%}\n    {{'<start_of_turn>model\n'}}\n{%- endif -%}\n",
}
BOS = {"llama-3": "<|begin_of_text|>", "gemma": "<bos>"}


def plain_render(source: str, messages, *, bos="<s>", eos="</s>", add_generation_prompt=True):
    """The oracle: jinja2 without a sandbox, as transformers' apply_chat_template sets it up."""
    def raise_exception(message):
        raise jinja2.TemplateError(message)

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True,
                             extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda v, indent=None: json.dumps(v, ensure_ascii=False,
                                                              indent=indent)
    return env.from_string(source).render(messages=messages, bos_token=bos, eos_token=eos,
                                          add_generation_prompt=add_generation_prompt,
                                          raise_exception=raise_exception)


@pytest.mark.parametrize("name", BUILTIN_TEMPLATES)
def test_builtin_templates_give_the_published_format(name):
    assert si.format_prompt(CONVERSATION, name) == EXPECTED[name]


@pytest.mark.parametrize("name", BUILTIN_TEMPLATES)
@pytest.mark.parametrize("conversation", [
    CONVERSATION,
    CONVERSATION[1:],  # no system message
    CONVERSATION[1:2],  # one user message
    [{"role": "user", "content": " ünïcödé 字 \n two lines "},
     {"role": "assistant", "content": "ok"}, {"role": "user", "content": "again"}],
], ids=["system", "no-system", "single", "unicode"])
def test_builtin_templates_match_the_models_own_templates(name, conversation):
    bos = BOS.get(name, "<s>")
    oracle = plain_render(PUBLISHED[name], conversation, bos=bos)
    ours = si.format_prompt(conversation, name, model={
        "tokenizer.ggml.tokens": [bos, "</s>"], "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 1})
    # the first BOS is the tokenizer's, not the template's
    assert ours == oracle.removeprefix(bos)


def test_generation_prompt_can_be_left_out():
    one = [{"role": "user", "content": "Hi"}]
    assert si.format_prompt(one, "chatml", add_generation_prompt=False) == \
        "<|im_start|>user\nHi<|im_end|>\n"
    assert si.format_prompt(one, "llama-3", add_generation_prompt=False) == \
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    assert si.format_prompt(one, "zephyr", add_generation_prompt=False) == "<|user|>\nHi</s>\n"


def test_a_string_is_one_user_message_and_aliases_work():
    assert si.format_prompt("Hi", "minicpm") == "<用户>Hi<AI>"
    assert si.format_prompt("Hi", "llama2") == si.format_prompt("Hi", "llama-2") == \
        "[INST] Hi [/INST]"
    assert si.format_prompt("Hi", "LLAMA3") == si.format_prompt("Hi", "llama-3")


def test_auto_picks_the_files_template_then_minicpm_or_gemma_then_chatml():
    gguf_template = "{% for m in messages %}[{{ m['role'] }}:{{ m['content'] }}]{% endfor %}"
    assert si.format_prompt("Hi", model={"tokenizer.chat_template": gguf_template,
                                         "general.name": "MiniCPM"}) == "[user:Hi]"
    for minicpm in ({"general.name": "MiniCPM-S-1B-sft"}, {"general.basename": "minicpm"},
                    {"tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "<用户>", "<AI>"]}):
        assert si.format_prompt("Hi", model=minicpm) == "<用户>Hi<AI>"
        assert resolve_template("auto", minicpm).end_of_turn == ("<用户>", "</s>")
    for gemma in ({"general.architecture": "gemma3"},
                  {"tokenizer.ggml.tokens": ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]}):
        assert si.format_prompt("Hi", model=gemma) == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
        assert resolve_template("auto", gemma).end_of_turn[0] == "<end_of_turn>"
    assert si.format_prompt("Hi", model={"general.name": "llama"}) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(TemplateError, match="model"):
        si.format_prompt("Hi")  # "auto" needs a model
    with pytest.raises(TemplateError, match="tokenizer.chat_template"):
        si.format_prompt("Hi", "gguf", model={"general.name": "x"})
    with pytest.raises(TemplateError, match="unknown chat template 'vicuna'"):
        si.format_prompt("Hi", "vicuna")


def test_bad_messages_name_the_culprit():
    with pytest.raises(TypeError, match=r"messages\[1\]\['content'\]"):
        si.format_prompt([{"role": "user", "content": "a"}, {"role": "user", "content": 3}],
                         "chatml")
    with pytest.raises(TypeError, match=r"messages\[0\]"):
        si.format_prompt(["hello"], "chatml")


def smollm2_metadata():
    return _core.read_gguf_info(smollm2_path())["metadata"]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", [CONVERSATION, CONVERSATION[1:], "Bonjour, ça va ?"],
                         ids=["system", "no-system", "text"])
def test_smollm2_template_from_its_gguf_renders_as_plain_jinja2(conversation,
                                                                  add_generation_prompt):
    metadata = smollm2_metadata()
    source = metadata["tokenizer.chat_template"]
    tokens = metadata["tokenizer.ggml.tokens"]
    messages = ([{"role": "user", "content": conversation}] if isinstance(conversation, str)
                else conversation)
    oracle = plain_render(source, messages, bos=tokens[metadata["tokenizer.ggml.bos_token_id"]],
                          eos=tokens[metadata["tokenizer.ggml.eos_token_id"]],
                          add_generation_prompt=add_generation_prompt)
    assert si.format_prompt(conversation, model=metadata,
                            add_generation_prompt=add_generation_prompt) == oracle
    assert resolve_template("auto", metadata).end_of_turn == ("<|im_end|>",)


BENIGN = [
    # namespaces, loop variables and filters that real templates use
    "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
    "{{ loop.index }}/{{ loop.length }} {{ m.role | upper }} {{ m['content'] | trim }}\n"
    "{% endfor %}{{ ns.n }}{{ bos_token }}{{ eos_token }}",
    # loop controls, slicing, tojson with non-ASCII text, string methods, dict items
    "{% for m in messages[1:] %}{% if loop.index > 2 %}{% break %}{% endif %}"
    "{{ m | tojson }}{{ m.content.split(' ') | length }}{% endfor %}"
    "{% for k, v in messages[0].items() | sort %}{{ k }}={{ v }};{% endfor %}",
    "{{ messages | map(attribute='role') | join(',') }}{{ '%s-%d' | format('a', 3) }}"
    "{% if add_generation_prompt %}GO{% endif %}{{ range(3) | list }}",
]


@pytest.mark.parametrize("source", BENIGN)
def test_benign_templates_render_in_the_sandbox_as_outside_it(source):
    messages = CONVERSATION[:3] + [{"role": "user", "content": "日本語 and \"quotes\" <tags>"}]
    assert si.format_prompt(messages, source, model={}) == plain_render(source, messages,
                                                                        bos="", eos="")


def test_raise_exception_becomes_a_template_error():
    metadata = {}
    source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first!') }}{% endif %}"
    with pytest.raises(TemplateError, match="user first!"):
        si.format_prompt([{"role": "assistant", "content": "x"}], source, model=metadata)
    with pytest.raises(TemplateError, match="syntax error on line 1"):
        si.format_prompt("x", "{% for %}", model={})


HOSTILE = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('touch /tmp/pwned') }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ raise_exception.__globals__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ messages | attr('__class__') }}",
    "{{ '{0.__class__.__mro__}'.format(messages) }}",
    "{% set x = messages.append({'role': 'user', 'content': 'injected'}) %}",
    "{{ messages[0].update({'content': 'changed'}) }}",
    "{{ messages.pop() }}",
    "{{ 'x' * 100000000 }}",
    "{{ [1] * 100000000 }}",
    "{{ 2 ** 100000000 }}",
    "{% for i in range(100000000) %}{% endfor %}",
]


@pytest.mark.parametrize("source", HOSTILE)
def test_hostile_templates_are_stopped(source):
    messages = [{"role": "user", "content": "hello"}]
    with pytest.raises(TemplateError, match="sandbox"):
        si.format_prompt(messages, model={"tokenizer.chat_template": source})
    assert messages == [{"role": "user", "content": "hello"}]  # nothing was changed
    assert issubclass(TemplateError, ValueError) and issubclass(TemplateError, si.SparseInferError)


# Templates that would run for hours or build gigabytes, each with what its error must name.
RUNAWAY = {
    "nested loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                     "at most 2 s"),
    "nested loops over a list": ("{% set r = range(100000) | list %}{% for i in r %}{% for j in r %}"
                                 "{% endfor %}{% endfor %}", "at most 2 s"),
    "printf width": ("{{ '%1000000000s' % 'x' }}", "pad or format"),
    "printf width from the arguments": ("{{ '%*s' % (1000000000, 'x') }}", "from the arguments"),
    "negative printf width from the arguments": ("{{ '%*s' % (-1000000000, 'x') }}", "from the arguments"),
    "format filter": ("{{ '%1000000000s' | format('x') }}", "pad or format"),
    "str.format width": ("{{ '{:>1000000000}'.format('x') }}", "pad or format"),
    "str.format nested width": ("{{ '{:>{w}}'.format('x', w=1000000000) }}", "from the arguments"),
    "str.format width as text": ("{{ '{:{}}'.format('x', '1000000000') }}", "from the arguments"),
    "printing a list of big strings": ("{% set s = 'x' * 1000000 %}{{ [s] * 100000 }}", "build at most"),
    "~ of a list of big strings": ("{% set s = 'x' * 1000000 %}{{ 'a' ~ [s] * 100000 }}", "build at most"),
    "doubling in a set block": ("{% set ns = namespace(x='x' * 1000000) %}{% for i in range(40) %}"
                                "{% set ns.x %}{{ ns.x }}{{ ns.x }}{% endset %}{% endfor %}", "build at most"),
    "bytes": ("{{ 'x'.encode() * 10000000000 }}", "encode"),
    "lipsum": ("{{ lipsum(100000000) }}", "lipsum"),
    "sum of lists, small enough to pass a size check": ("{{ ([[0] * 1000] * 16000) | sum(start=[]) }}",
                                                         "only sum numbers"),
    "join filter on a string": ("{{ ('x' * 1000000) | join('y' * 1000) }}", "build at most"),
    "repeated escapes": ("{% set s = '<' * 1000000 %}{{ s | forceescape | forceescape | forceescape "
                         "| forceescape | forceescape }}", "build at most"),
    "tojson separators": ("{{ range(100000) | list | tojson(separators=('x' * 1000000, ':')) }}",
                          "separate JSON"),
    "center filter": ("{{ 'x' | center(1000000000) }}", "build at most"),
    "str.center": ("{{ 'x'.center(1000000000) }}", "build at most"),
    "str.zfill": ("{{ 'x'.zfill(1000000000) }}", "build at most"),
    "str.expandtabs": ("{{ ('\t' * 1000000).expandtabs(1000000) }}", "build at most"),
    "repeated *": ("{% for i in range(100000) %}{{ 'x' * 1000000 }}{% endfor %}", "build at most"),
    "doubling with ~": ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                        "{% endfor %}{{ ns.s | length }}", "build at most"),
    "doubling a list with +": ("{% set ns = namespace(s=[1]) %}{% for i in range(40) %}"
                               "{% set ns.s = ns.s + ns.s %}{% endfor %}", "build at most"),
    "str.replace": ("{{ ('x' * 1000000).replace('x', 'y' * 1000000) }}", "build at most"),
    "replace filter": ("{{ ('x' * 1000000) | replace('x', 'y' * 1000000) }}", "build at most"),
    "join filter": ("{{ (['y' * 1000000] * 1000000) | join }}", "build at most"),
    "str.join": ("{{ ''.join(['y' * 1000000] * 1000000) }}", "build at most"),
    "sum of lists": ("{{ ([[0] * 1000000] * 1000000) | sum(start=[]) | length }}", "only sum numbers"),
    "indent filter": ("{{ ('\n' * 1000000) | indent(1000000) }}", "build at most"),
    "wordwrap filter": ("{{ ('x ' * 500000) | wordwrap(1, wrapstring='y' * 1000000) }}", "build at most"),
    "tojson indent": ("{{ range(100000) | list | tojson(indent=100000) }}", "indent or separate JSON"),
    "many distinct strings kept": ("{% set ns = namespace(l=[]) %}{% for i in range(100000) %}"
                                   "{% set ns.l = ns.l + [('y' * 1000000) ~ i] %}{% endfor %}", "build at most"),
}


# AddressSanitizer reserves terabytes of shadow memory: an address-space cap stops it at start.
@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""), reason="under ASan")
def test_runaway_templates_stop_in_seconds_within_a_memory_cap():
    """Each template in a child process whose address space is capped at 1.5 GiB: a
    TemplateError naming the bound, within a few seconds, and the child's peak memory stays
    far below the cap."""
    pytest.importorskip("resource")
    script = textwrap.dedent("""
        import json, resource, sys, time
        resource.setrlimit(resource.RLIMIT_AS, (3 << 29, 3 << 29))
        import sparseinfer as si
        from sparseinfer.errors import TemplateError
        report = {}
        for name, source in json.loads(sys.argv[1]).items():
            start = time.monotonic()
            try:
                si.format_prompt("hi", model={"tokenizer.chat_template": source})
                outcome = "rendered"
            except TemplateError as error:
                outcome = str(error)
            except BaseException as error:
                outcome = f"{type(error).__name__}: {error}"
            report[name] = [time.monotonic() - start, outcome]
        report["peak MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(report))
    """)
    sources = {name: source for name, (source, _) in RUNAWAY.items()}
    done = subprocess.run([sys.executable, "-c", script, json.dumps(sources)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (_, fragment) in RUNAWAY.items():
        seconds, outcome = report[name]
        assert "stopped by the sandbox" in outcome and fragment in outcome, (name, outcome)
        assert seconds < 5, (name, seconds)
    assert report["peak MiB"] < 768, report["peak MiB"]


def test_numbers_in_text_and_benign_formatting_are_not_refused():
    source = ("{{ 'ticket 20240101123: %s, %5.2f%%' % ('ok', 3.14159) }} {{ '{:>6}|{}'.format('a', 12345678) }}"
              "{{ '%-4d|' | format(7) }}{% set ns = namespace(t='') %}{% for m in messages %}"
              "{% set ns.t = ns.t ~ m.content ~ '|' %}{% endfor %}{{ ns.t }}")
    assert si.format_prompt(CONVERSATION, source, model={}) == plain_render(source, CONVERSATION, bos="", eos="")


def test_a_long_conversation_renders_within_the_bounds():
    """A real template (SmolLM2's kind: a loop over the messages) on a conversation of 2,000
    messages, 2 MB of text: rendered exactly as plain jinja2 renders it."""
    source = ("{% for message in messages %}{{ '<|im_start|>' ~ message['role'] ~ '\n' ~ "
              "message['content'] ~ '<|im_end|>' ~ '\n' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " + "word " * 200}
                for i in range(2000)]
    assert si.format_prompt(messages, source, model={}) == plain_render(source, messages, bos="", eos="")


def test_the_sandbox_error_says_what_was_refused():
    with pytest.raises(TemplateError, match="sandbox.*__class__"):
        si.format_prompt("x", "{{ ''.__class__ }}", model={})


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "spm.gguf"
    written = ggufgen.write_llama_model(path, n_vocab=300, n_embd=32, n_layer=2, n_head=4,
                                        n_head_kv=2, n_ff=48, n_ctx=256, seed=11)
    with si.Model(written.path, n_ctx=256) as model:
        yield model


def test_bos_written_by_the_template_is_not_added_twice(spm_model):
    """The synthetic SPM vocabulary has BOS "<s>" (id 1) and asks for BOS."""
    assert spm_model.metadata["tokenizer.ggml.add_bos_token"] is True
    text = plain_render(PUBLISHED["llama-2"], CONVERSATION[1:4])  # starts with "<s>"
    assert text.startswith("<s>[INST]")
    with_bos = spm_model.tokenize(text, add_bos=False, special=True)
    assert with_bos[0] == 1 and with_bos[1] != 1
    spm_model.generate(text, max_tokens=1, temperature=0)
    assert spm_model.stats()["prompt_tokens"] == len(with_bos)  # BOS once, from the text
    builtin = si.format_prompt(CONVERSATION[1:4], "llama-2", model=spm_model)
    assert builtin == text.removeprefix("<s>")
    assert spm_model.tokenize(builtin, special=True) == with_bos  # the tokenizer's BOS instead
