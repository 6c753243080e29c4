"""transformers classes for edgeprune structured-pruned models (blocks of different sizes).

edgeprune copies this file into every structured model folder and names its classes in ``config.json``'s
``auto_map``, so the folder reloads with plain transformers (edgeprune must be installed)::

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
"""

from transformers import BertModel, LlamaForCausalLM

from edgeprune.models.registry import adapter_for_model_type
from edgeprune.structured.layout import LAYOUT_KEY, apply_layout


def _resize(model) -> None:
    apply_layout(model, adapter_for_model_type(model.config.model_type), getattr(model.config, LAYOUT_KEY))


class EdgepruneLlamaForCausalLM(LlamaForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        _resize(self)


class EdgepruneBertModel(BertModel):
    def __init__(self, config, add_pooling_layer=True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        _resize(self)


#: adapter family → (auto class, class name) written into config.json's auto_map
AUTO_MAP = {
    "llama": ("AutoModelForCausalLM", "EdgepruneLlamaForCausalLM"),
    "bert": ("AutoModel", "EdgepruneBertModel"),
}
