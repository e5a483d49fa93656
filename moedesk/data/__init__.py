"""Datasets for the LM kinds: tokenizers, prepared token folders, built-in corpora.

- `manifest.py`: a prepared folder's files and its `manifest.json` (json only), and which
  files a `[data] path` or `val_path` means; the profile checks read it.
- `tokenizer.py`: one tokenizer interface over bytes and a trained byte-level BPE
  (`tokenizer.json`), with incremental decoding; the byte-exact HF tokenizer of export.
- `tokens.py`: reading and writing token arrays (numpy).
- `prepare.py`: `moedesk data prepare`: train a BPE locally with Hugging Face
  `tokenizers`, encode, write the folder.
- `builtin.py`: corpora every machine has (`pydoc`: the standard library's help topics).
Nothing here imports torch.
"""
