"""Task instructions for known BEIR datasets (E5-mistral / RARe wording); others get the generic one."""

from __future__ import annotations

from rare.prompt import DEFAULT_INSTRUCTION

BEIR_INSTRUCTIONS = {
    "scifact": "Given a scientific claim, retrieve documents that support or refute the claim",
    "nfcorpus": "Given a question, retrieve relevant documents that best answer the question",
    "fiqa": "Given a financial question, retrieve user replies that best answer the question",
    "arguana": "Given a claim, find documents that refute the claim",
    "scidocs": "Given a scientific paper title, retrieve paper abstracts that are cited by the given paper",
    "trec-covid": "Given a query on COVID-19, retrieve documents that answer the query",
    "nq": "Given a question, retrieve Wikipedia passages that answer the question",
    "hotpotqa": "Given a multi-hop question, retrieve documents that can help answer the question",
    "quora": "Given a question, retrieve questions that are semantically equivalent to the given question",
}


def instruction_for(dataset_name: str) -> str:
    return BEIR_INSTRUCTIONS.get(dataset_name.lower(), DEFAULT_INSTRUCTION)
