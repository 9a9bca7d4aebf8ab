"""The chat templates of the model families llmrun adds (tests/data/templates/, README.md there
says where each comes from) render exactly as Hugging Face transformers renders them:
tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=..., **kwargs)."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from llmrun import chat
from llmrun.chat import render_chat
from llmrun.errors import LlmrunError

TEMPLATES = Path(__file__).parent / "data" / "templates"

# bos_token / eos_token as each model's tokenizer_config.json names them (None: the model has none)
SPECIAL = {
    "Qwen-Qwen3-0.6B": (None, "<|im_end|>"),
    "HuggingFaceTB-SmolLM3-3B": (None, "<|im_end|>"),
    "microsoft-Phi-3.5-mini-instruct": ("<s>", "<|endoftext|>"),
    "microsoft-Phi-4-mini-instruct": ("<|endoftext|>", "<|endoftext|>"),
    "google-gemma-3-4b-it": ("<bos>", "<eos>"),
    "google-gemma-2-2b-it": ("<bos>", "<eos>"),
    "ibm-granite-granite-3.3-2B-Instruct": ("<|end_of_text|>", "<|end_of_text|>"),
    "mistralai-Mistral-Nemo-Instruct-2407": ("<s>", "</s>"),
}


class Tokens:
    """Just what render_chat asks of a tokenizer: the special ids, and their text."""

    def __init__(self, bos: str | None, eos: str):
        self.pieces = [eos] + [bos] * (bos is not None)
        self.eos_ids = [0]
        self.bos_id = 1 if bos is not None else None

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


def model(family: str) -> SimpleNamespace:
    template = (TEMPLATES / f"{family}.jinja").read_text(encoding="utf-8")
    return SimpleNamespace(chat_template=template, tokenizer=Tokens(*SPECIAL[family]))


class March7(datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2025, 3, 7, 12, 0)


@pytest.fixture(autouse=True)
def fixed_date(monkeypatch):
    """Granite writes today's date (strftime_now) into its default system prompt."""
    monkeypatch.setattr(chat, "datetime", March7)


SYS = {"role": "system", "content": "You are a terse assistant."}
U1 = {"role": "user", "content": "What is 2+2?"}
A1 = {"role": "assistant", "content": "4."}
U2 = {"role": "user", "content": "And 3+3?"}
A1_THINK = {"role": "assistant", "content": "<think>\nAdd two and two.\n</think>\n\n4."}
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Météo d'une ville",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

# name: (template, messages, add_generation_prompt, template kwargs)
CASES = {
    "qwen3_user": ("Qwen-Qwen3-0.6B", [U1], True, {}),
    "qwen3_thinking_on": ("Qwen-Qwen3-0.6B", [SYS, U1], True, {"enable_thinking": True}),
    "qwen3_thinking_off": ("Qwen-Qwen3-0.6B", [SYS, U1], True, {"enable_thinking": False}),
    "qwen3_drops_old_reasoning": ("Qwen-Qwen3-0.6B", [SYS, U1, A1_THINK, U2], True, {}),
    "qwen3_keeps_last_reasoning": ("Qwen-Qwen3-0.6B", [U1, A1_THINK], False, {}),
    "qwen3_tools": ("Qwen-Qwen3-0.6B", [SYS, U1], True, {"tools": [TOOL], "enable_thinking": False}),
    "smollm3_default": ("HuggingFaceTB-SmolLM3-3B", [U1], True, {"enable_thinking": False}),
    "smollm3_system_no_think": ("HuggingFaceTB-SmolLM3-3B", [{"role": "system", "content": "Be brief. /no_think"}, U1],
                                True, {}),
    "smollm3_system_think_overrides": ("HuggingFaceTB-SmolLM3-3B",
                                       [{"role": "system", "content": "Be brief. /think"}, U1, A1, U2],
                                       True, {"enable_thinking": False}),
    "smollm3_no_think_multi_turn": ("HuggingFaceTB-SmolLM3-3B", [SYS, U1, A1, U2], True, {"enable_thinking": False}),
    "phi35_system": ("microsoft-Phi-3.5-mini-instruct", [SYS, U1], True, {}),
    "phi35_multi_turn": ("microsoft-Phi-3.5-mini-instruct", [U1, A1, U2], True, {}),
    "phi35_no_generation_prompt": ("microsoft-Phi-3.5-mini-instruct", [SYS, U1, A1], False, {}),
    "phi4mini_system": ("microsoft-Phi-4-mini-instruct", [SYS, U1], True, {}),
    "phi4mini_multi_turn": ("microsoft-Phi-4-mini-instruct", [SYS, U1, A1, U2], True, {}),
    "phi4mini_no_generation_prompt": ("microsoft-Phi-4-mini-instruct", [U1, A1], False, {}),
    "gemma3_system_folded": ("google-gemma-3-4b-it", [SYS, U1], True, {}),
    "gemma3_multi_turn": ("google-gemma-3-4b-it", [SYS, U1, A1, {"role": "user", "content": "  And 3+3?\n"}], True, {}),
    "gemma3_no_generation_prompt": ("google-gemma-3-4b-it", [U1, A1], False, {}),
    "gemma2_multi_turn": ("google-gemma-2-2b-it", [U1, A1, U2], True, {}),
    "granite_default_system": ("ibm-granite-granite-3.3-2B-Instruct", [U1], True, {}),
    "granite_thinking": ("ibm-granite-granite-3.3-2B-Instruct", [U1], True, {"thinking": True}),
    "granite_system_multi_turn": ("ibm-granite-granite-3.3-2B-Instruct", [SYS, U1, A1, U2], True, {}),
    "granite_tools_and_documents": ("ibm-granite-granite-3.3-2B-Instruct", [U1], True,
                                    {"tools": [TOOL], "documents": [{"doc_id": 1, "text": "Two and two make four."}]}),
    "mistral_user": ("mistralai-Mistral-Nemo-Instruct-2407", [U1], True, {}),
    "mistral_system_multi_turn": ("mistralai-Mistral-Nemo-Instruct-2407", [SYS, U1, A1, U2], True, {}),
}

# What transformers 5.25.0 (jinja2 3.1.6) renders for each case: apply_chat_template(messages,
# tokenize=False, add_generation_prompt=..., chat_template=<the file>, **kwargs) on a tokenizer with the
# family's bos_token/eos_token, its strftime_now pinned to 2025-03-07 as above; pasted here as literals
# (transformers is not a dependency). Checked by hand against each template's logic as well: Qwen3's
# empty <think> block after the cue with enable_thinking=False, and the reasoning of an assistant turn
# before the last user message dropped; SmolLM3's /think or /no_think from the system message over
# enable_thinking; Gemma 3's system message + "\n\n" at the head of the first user turn, and its
# contents trimmed; Mistral's system message joined to the last user message; tojson as json.dumps
# with ensure_ascii=False ("Météo"), indent=4 for Granite's tools.
WANT = {
    "qwen3_user": (
        "<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "qwen3_thinking_on": (
        "<|im_start|>system\n"
        "You are a terse assistant.<|im_end|>\n"
        "<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "qwen3_thinking_off": (
        "<|im_start|>system\n"
        "You are a terse assistant.<|im_end|>\n"
        "<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "<think>\n\n"
        "</think>\n\n"
    ),
    "qwen3_drops_old_reasoning": (
        "<|im_start|>system\n"
        "You are a terse assistant.<|im_end|>\n"
        "<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "4.<|im_end|>\n"
        "<|im_start|>user\n"
        "And 3+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "qwen3_keeps_last_reasoning": (
        "<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "<think>\n"
        "Add two and two.\n"
        "</think>\n\n"
        "4.<|im_end|>\n"
    ),
    "qwen3_tools": (
        "<|im_start|>system\n"
        "You are a terse assistant.\n\n"
        "# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        "<tools>\n"
        "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Météo d'une ville\", "
        "\"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": "
        "[\"city\"]}}}\n"
        "</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n"
        "<tool_call>\n"
        "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "<think>\n\n"
        "</think>\n\n"
    ),
    "smollm3_default": (
        "<|im_start|>system\n"
        "## Metadata\n\n"
        "Knowledge Cutoff Date: June 2025\n"
        "Reasoning Mode: /no_think\n\n"
        "## Custom Instructions\n\n"
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face.\n\n"
        "<|im_end|>\n"
        "<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "<think>\n\n"
        "</think>\n"
    ),
    "smollm3_system_no_think": (
        "<|im_start|>system\n"
        "## Metadata\n\n"
        "Knowledge Cutoff Date: June 2025\n"
        "Reasoning Mode: /no_think\n\n"
        "## Custom Instructions\n\n"
        "Be brief.\n\n"
        "<|im_end|>\n"
        "<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "<think>\n\n"
        "</think>\n"
    ),
    "smollm3_system_think_overrides": (
        "<|im_start|>system\n"
        "## Metadata\n\n"
        "Knowledge Cutoff Date: June 2025\n"
        "Reasoning Mode: /think\n\n"
        "## Custom Instructions\n\n"
        "Be brief.\n\n"
        "<|im_end|>\n"
        "<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "4.<|im_end|>\n"
        "<|im_start|>user\n"
        "And 3+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "smollm3_no_think_multi_turn": (
        "<|im_start|>system\n"
        "## Metadata\n\n"
        "Knowledge Cutoff Date: June 2025\n"
        "Reasoning Mode: /no_think\n\n"
        "## Custom Instructions\n\n"
        "You are a terse assistant.\n\n"
        "<|im_end|>\n"
        "<|im_start|>user\n"
        "What is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "<think>\n\n"
        "</think>\n"
        "4.<|im_end|>\n"
        "<|im_start|>user\n"
        "And 3+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "<think>\n\n"
        "</think>\n"
    ),
    "phi35_system": (
        "<|system|>\n"
        "You are a terse assistant.<|end|>\n"
        "<|user|>\n"
        "What is 2+2?<|end|>\n"
        "<|assistant|>\n"
    ),
    "phi35_multi_turn": (
        "<|user|>\n"
        "What is 2+2?<|end|>\n"
        "<|assistant|>\n"
        "4.<|end|>\n"
        "<|user|>\n"
        "And 3+3?<|end|>\n"
        "<|assistant|>\n"
    ),
    "phi35_no_generation_prompt": (
        "<|system|>\n"
        "You are a terse assistant.<|end|>\n"
        "<|user|>\n"
        "What is 2+2?<|end|>\n"
        "<|assistant|>\n"
        "4.<|end|>\n"
        "<|endoftext|>"
    ),
    "phi4mini_system": "<|system|>You are a terse assistant.<|end|><|user|>What is 2+2?<|end|><|assistant|>",
    "phi4mini_multi_turn": (
        "<|system|>You are a terse assistant.<|end|><|user|>What is "
        "2+2?<|end|><|assistant|>4.<|end|><|user|>And 3+3?<|end|><|assistant|>"
    ),
    "phi4mini_no_generation_prompt": "<|user|>What is 2+2?<|end|><|assistant|>4.<|end|><|endoftext|>",
    "gemma3_system_folded": (
        "<bos><start_of_turn>user\n"
        "You are a terse assistant.\n\n"
        "What is 2+2?<end_of_turn>\n"
        "<start_of_turn>model\n"
    ),
    "gemma3_multi_turn": (
        "<bos><start_of_turn>user\n"
        "You are a terse assistant.\n\n"
        "What is 2+2?<end_of_turn>\n"
        "<start_of_turn>model\n"
        "4.<end_of_turn>\n"
        "<start_of_turn>user\n"
        "And 3+3?<end_of_turn>\n"
        "<start_of_turn>model\n"
    ),
    "gemma3_no_generation_prompt": (
        "<bos><start_of_turn>user\n"
        "What is 2+2?<end_of_turn>\n"
        "<start_of_turn>model\n"
        "4.<end_of_turn>\n"
    ),
    "gemma2_multi_turn": (
        "<bos><start_of_turn>user\n"
        "What is 2+2?<end_of_turn>\n"
        "<start_of_turn>model\n"
        "4.<end_of_turn>\n"
        "<start_of_turn>user\n"
        "And 3+3?<end_of_turn>\n"
        "<start_of_turn>model\n"
    ),
    "granite_default_system": (
        "<|start_of_role|>system<|end_of_role|>Knowledge Cutoff Date: April 2024. Today's Date: March "
        "07, 2025. You are Granite, developed by IBM. You are a helpful AI assistant.<|end_of_text|>\n"
        "<|start_of_role|>user<|end_of_role|>What is 2+2?<|end_of_text|>\n"
        "<|start_of_role|>assistant<|end_of_role|>"
    ),
    "granite_thinking": (
        "<|start_of_role|>system<|end_of_role|>Knowledge Cutoff Date: April 2024. Today's Date: March "
        "07, 2025. You are Granite, developed by IBM. You are a helpful AI assistant.\n"
        "Respond to every user query in a comprehensive and detailed way. You can write down your "
        "thoughts and reasoning process before responding. In the thought process, engage in a "
        "comprehensive cycle of analysis, summarization, exploration, reassessment, reflection, "
        "backtracing, and iteration to develop well-considered thinking process. In the response "
        "section, based on various attempts, explorations, and reflections from the thoughts section, "
        "systematically present the final solution that you deem correct. The response should summarize "
        "the thought process. Write your thoughts between <think></think> and write your response "
        "between <response></response> for each user query.<|end_of_text|>\n"
        "<|start_of_role|>user<|end_of_role|>What is 2+2?<|end_of_text|>\n"
        "<|start_of_role|>assistant<|end_of_role|>"
    ),
    "granite_system_multi_turn": (
        "<|start_of_role|>system<|end_of_role|>You are a terse assistant.<|end_of_text|>\n"
        "<|start_of_role|>user<|end_of_role|>What is 2+2?<|end_of_text|>\n"
        "<|start_of_role|>assistant<|end_of_role|>4.<|end_of_text|>\n"
        "<|start_of_role|>user<|end_of_role|>And 3+3?<|end_of_text|>\n"
        "<|start_of_role|>assistant<|end_of_role|>"
    ),
    "granite_tools_and_documents": (
        "<|start_of_role|>system<|end_of_role|>Knowledge Cutoff Date: April 2024. Today's Date: March "
        "07, 2025. You are Granite, developed by IBM. You are a helpful assistant with access to the "
        "following tools. When a tool is required to answer the user's query, respond only with "
        "<|tool_call|> followed by a JSON list of tools used. If a tool does not exist in the provided "
        "list of tools, notify the user that you do not have the ability to fulfill the request. Write "
        "the response to the user's input by strictly aligning with the facts in the provided documents. "
        "If the information needed to answer the question is not available in the documents, inform the "
        "user that the question cannot be answered based on the available data.<|end_of_text|>\n"
        "<|start_of_role|>available_tools<|end_of_role|>[\n"
        "    {\n"
        "        \"type\": \"function\",\n"
        "        \"function\": {\n"
        "            \"name\": \"get_weather\",\n"
        "            \"description\": \"Météo d'une ville\",\n"
        "            \"parameters\": {\n"
        "                \"type\": \"object\",\n"
        "                \"properties\": {\n"
        "                    \"city\": {\n"
        "                        \"type\": \"string\"\n"
        "                    }\n"
        "                },\n"
        "                \"required\": [\n"
        "                    \"city\"\n"
        "                ]\n"
        "            }\n"
        "        }\n"
        "    }\n"
        "]<|end_of_text|>\n"
        "<|start_of_role|>document {\"document_id\": \"1\"}<|end_of_role|>\n"
        "Two and two make four.<|end_of_text|>\n"
        "<|start_of_role|>user<|end_of_role|>What is 2+2?<|end_of_text|>\n"
        "<|start_of_role|>assistant<|end_of_role|>"
    ),
    "mistral_user": "<s>[INST]What is 2+2?[/INST]",
    "mistral_system_multi_turn": (
        "<s>[INST]What is 2+2?[/INST]4.</s>[INST]You are a terse assistant.\n\n"
        "And 3+3?[/INST]"
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_renders_as_transformers(name):
    family, messages, add_generation_prompt, kwargs = CASES[name]
    got = render_chat(model(family), messages, add_generation_prompt=add_generation_prompt, template_kwargs=kwargs)
    assert got == WANT[name]


def test_qwen3_enable_thinking_false_adds_an_empty_think_block():
    with_thinking = render_chat(model("Qwen-Qwen3-0.6B"), [U1])
    assert render_chat(model("Qwen-Qwen3-0.6B"), [U1], template_kwargs={"enable_thinking": False}) == \
        with_thinking + "<think>\n\n</think>\n\n"


@pytest.mark.parametrize("family, messages, message", [
    # the templates' own raise_exception() messages (transformers raises jinja2's TemplateError with them)
    ("google-gemma-2-2b-it", [SYS, U1], "System role not supported"),
    ("google-gemma-3-4b-it", [U1, U2], "Conversation roles must alternate user/assistant/user/assistant/..."),
    ("mistralai-Mistral-Nemo-Instruct-2407", [SYS, A1, U1],
     "After the optional system message, conversation roles must alternate user/assistant/user/assistant/..."),
])
def test_template_refusal_is_one_clear_error(family, messages, message):
    with pytest.raises(LlmrunError) as e:
        render_chat(model(family), messages)
    assert str(e.value) == f"the chat template refused the conversation: {message}"


def test_template_kwargs_do_not_replace_the_conversation():
    got = render_chat(model("Qwen-Qwen3-0.6B"), [U1], add_generation_prompt=False,
                      template_kwargs={"messages": [U2], "add_generation_prompt": True})
    assert got == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"


def test_environment_as_transformers_sets_it_up():
    data = {"b": "<é>", "a": [1, 2]}
    template = ("{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ x | tojson(separators=(',', ':'), sort_keys=true) }}"
                "|{{ x | tojson(ensure_ascii=true) }}"
                "|{% generation %}{{ messages[0].content }}{% endgeneration %}"
                "|{{ tools }}|{{ documents }}|{{ bos_token }}{{ eos_token }}")
    got = render_chat(model("google-gemma-2-2b-it"), [U1], template=template, template_kwargs={"x": data})
    assert got.split("|") == [json.dumps(data, ensure_ascii=False), json.dumps(data, ensure_ascii=False, indent=2),
                              json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=True),
                              json.dumps(data), "What is 2+2?", "None", "None", "<bos><eos>"]
