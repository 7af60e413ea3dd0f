"""Question datasets: QA files (DeepResearcher / Search-R1 parquet, R1-Searcher / FlashRAG / our jsonl,
`world:` splits) → `PromptItem`s, and `PromptSampler`, the trainer's resumable, seeded prompt order.

Nothing is imported here, so importing one module does not pull in the others' dependencies.
"""
