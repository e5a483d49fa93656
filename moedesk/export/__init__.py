"""Export a run's checkpoint to a Hugging Face `transformers` folder (docs/export.md).

`hf.py`: the tensor-by-tensor mapping (moedesk dense -> LlamaForCausalLM, topk ->
MixtralForCausalLM), the configs, the tokenizer, and `export_checkpoint`, which writes
the folder and measures the export against moedesk's own logits. Needs the `[hf]` extra
(transformers, safetensors, tokenizers); nothing is downloaded.
"""
