"""Hugging Face unified (text + image) models behind modlab's unified interface, one module per job:

    base.py          HFUnifiedModel (rows, per-task losses, greedy answers, image sampling) and the
                     row helpers every family uses
    hf_emu3.py       Emu3 (Emu3ForConditionalGeneration)
    hf_chameleon.py  Chameleon (ChameleonForConditionalGeneration)
    hf_janus.py      Janus (JanusForConditionalGeneration)
    hf_showo.py      Show-o on transformers' PhiForCausalLM (its directory layout and loader)
    showo_phi.py     Show-o's backbone read off its public code: vocabulary, omni-attention,
                     rows, MaskGIT sampling and losses
    loader.py        a `save_pretrained` directory read by the family registered for its model_type

A family is registered in modlab.registry (UnifiedSpec), which imports these modules by name on
first use; this package imports nothing.
"""
