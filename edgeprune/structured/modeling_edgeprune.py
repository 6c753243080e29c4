"""transformers classes for edgeprune structured-pruned models (blocks of different sizes).

edgeprune copies this file into every structured model folder and names its classes in ``config.json``'s
``auto_map``, so the folder reloads with plain transformers (edgeprune must be installed)::

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

Each class is the source model's own transformers class (Qwen2 keeps its q/k/v biases, SmolLM3 its layers
without RoPE), resized to the layout right after it is built.
"""

from transformers import BertModel, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, SmolLM3ForCausalLM

from edgeprune.models.registry import adapter_for_model_type
from edgeprune.structured.layout import LAYOUT_KEY, apply_layout  # its AUTO_MAP names the classes below


class _Resized:
    """Build the dense model from the config, then give every block its layout shape (loading fills the weights)."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        apply_layout(self, adapter_for_model_type(config.model_type), getattr(config, LAYOUT_KEY))


class EdgepruneLlamaForCausalLM(_Resized, LlamaForCausalLM):
    pass


class EdgepruneMistralForCausalLM(_Resized, MistralForCausalLM):
    pass


class EdgepruneQwen2ForCausalLM(_Resized, Qwen2ForCausalLM):
    pass


class EdgepruneSmolLM3ForCausalLM(_Resized, SmolLM3ForCausalLM):
    pass


class EdgepruneBertModel(_Resized, BertModel):
    pass
