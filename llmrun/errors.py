"""The errors a user can cause. The CLI prints any of these as one line and exits non-zero."""


class LlmrunError(Exception):
    """Base class: something about the user's input, with a message saying what to do."""


class FormatError(LlmrunError, ValueError):
    """A .llmr file that is truncated, corrupt, or of a version this llmrun cannot read."""


class ConvertError(LlmrunError, ValueError):
    """A checkpoint that cannot be converted: missing files or keys, unsupported architecture."""


class SettingError(LlmrunError, ValueError):
    """A setting out of its range: a sampling parameter, a token id, a length to generate."""


class ContextError(LlmrunError, ValueError):
    """A prompt (plus what is to be generated) that does not fit in the model's context."""
