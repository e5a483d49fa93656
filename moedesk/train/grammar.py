"""The built-in synthetic grammar corpus: English-like sentences with a class per byte.

A small phrase-structure grammar (pronoun or noun-phrase subjects, verbs that agree in
tense and person, objects, prepositional phrases, adverbs, conjunctions, questions) is
sampled with a seeded `random.Random`, so the same (seed, sentences) always yields the
same bytes. Every byte is labelled with the class of the word it belongs to
(`LABEL_NAMES`), which lets an analysis ask which experts serve which word classes.
"""

from __future__ import annotations

import random
from functools import lru_cache

import numpy as np

LABEL_NAMES: tuple[str, ...] = (
    "space", "punct", "subject_pronoun", "object_pronoun", "determiner", "noun", "adjective",
    "verb_inf", "verb_past", "verb_3sg", "auxiliary", "preposition", "adverb", "conjunction",
)
LABEL_ID = {name: i for i, name in enumerate(LABEL_NAMES)}

# (pronoun, takes the 3rd-person -s form in the present)
SUBJECT_PRONOUNS = (("I", False), ("you", False), ("he", True), ("she", True), ("it", True),
                    ("we", False), ("they", False))
OBJECT_PRONOUNS = ("me", "you", "him", "her", "it", "us", "them")
DETERMINERS = ("the", "a", "this", "that", "every", "my", "your", "our", "their")
NOUNS = ("cat", "dog", "bird", "child", "teacher", "farmer", "river", "house", "garden",
         "book", "letter", "tree", "apple", "window", "road", "city", "song", "boat",
         "friend", "doctor", "horse", "table", "stone", "lamp")
ADJECTIVES = ("small", "old", "green", "quiet", "happy", "bright", "tall", "cold", "heavy",
              "young", "red", "strange")
# (infinitive, past, 3rd person singular); transitive verbs take an object
TRANSITIVE = (("see", "saw", "sees"), ("find", "found", "finds"), ("like", "liked", "likes"),
              ("carry", "carried", "carries"), ("watch", "watched", "watches"),
              ("build", "built", "builds"), ("read", "read", "reads"),
              ("help", "helped", "helps"), ("take", "took", "takes"),
              ("paint", "painted", "paints"), ("follow", "followed", "follows"))
INTRANSITIVE = (("walk", "walked", "walks"), ("sleep", "slept", "sleeps"),
                ("run", "ran", "runs"), ("sing", "sang", "sings"), ("wait", "waited", "waits"),
                ("laugh", "laughed", "laughs"), ("swim", "swam", "swims"),
                ("go", "went", "goes"))
PREPOSITIONS = ("in", "near", "under", "behind", "with", "across", "beside", "over")
ADVERBS = ("slowly", "quickly", "often", "quietly", "again", "today", "yesterday")
CONJUNCTIONS = ("and", "but", "because", "so")

Word = tuple[str, str]  # (text, label)


def _fix_article(words: list[Word]) -> None:
    """'a' -> 'an' before a vowel: one more agreement rule for the model to learn."""
    if words[0][0] == "a" and words[1][0][0] in "aeiou":
        words[0] = ("an", "determiner")


class _Sampler:
    def __init__(self, rng: random.Random):
        self.rng = rng

    def pick(self, options):
        return options[self.rng.randrange(len(options))]

    def noun_phrase(self) -> list[Word]:
        words = [(self.pick(DETERMINERS), "determiner")]
        if self.rng.random() < 0.4:
            words.append((self.pick(ADJECTIVES), "adjective"))
        words.append((self.pick(NOUNS), "noun"))
        _fix_article(words)
        if self.rng.random() < 0.15:
            words += [(self.pick(PREPOSITIONS), "preposition"), *self.simple_np()]
        return words

    def simple_np(self) -> list[Word]:
        words = [(self.pick(DETERMINERS), "determiner"), (self.pick(NOUNS), "noun")]
        _fix_article(words)
        return words

    def subject(self) -> tuple[list[Word], bool]:
        """A subject and whether it is 3rd-person singular."""
        if self.rng.random() < 0.5:
            pronoun, third = self.pick(SUBJECT_PRONOUNS)
            return [(pronoun, "subject_pronoun")], third
        return self.noun_phrase(), True

    def obj(self) -> list[Word]:
        if self.rng.random() < 0.35:
            return [(self.pick(OBJECT_PRONOUNS), "object_pronoun")]
        return self.noun_phrase()

    def predicate(self, third: bool) -> list[Word]:
        """Verb (tense and agreement chosen here) plus its complements."""
        transitive = self.rng.random() < 0.6
        inf, past, sg3 = self.pick(TRANSITIVE if transitive else INTRANSITIVE)
        tense = self.rng.random()
        if tense < 0.4:
            words = [(past, "verb_past")]
        elif tense < 0.75:
            words = [(sg3, "verb_3sg")] if third else [(inf, "verb_inf")]
        elif tense < 0.9:
            words = [("will", "auxiliary"), (inf, "verb_inf")]
        else:
            aux = "does" if third else "do"
            words = [(self.pick((aux, "did")), "auxiliary"), ("not", "adverb"), (inf, "verb_inf")]
        if transitive:
            words += self.obj()
        if self.rng.random() < 0.3:
            words += [(self.pick(PREPOSITIONS), "preposition"), *self.simple_np()]
        if self.rng.random() < 0.2:
            words.append((self.pick(ADVERBS), "adverb"))
        return words

    def clause(self) -> list[Word]:
        subject, third = self.subject()
        return subject + self.predicate(third)

    def question(self) -> list[Word]:
        subject, third = self.subject()
        aux = self.pick(("did", "does" if third else "do", "will"))
        inf, _, _ = self.pick(TRANSITIVE)
        return [(aux, "auxiliary"), *subject, (inf, "verb_inf"), *self.obj(), ("?", "punct")]

    def sentence(self) -> list[Word]:
        if self.rng.random() < 0.15:
            return self.question()
        words = self.clause()
        if self.rng.random() < 0.25:
            words += [(",", "punct"), (self.pick(CONJUNCTIONS), "conjunction"), *self.clause()]
        return words + [(".", "punct")]


def _render(words: list[Word], out: bytearray, labels: bytearray) -> None:
    for i, (text, label) in enumerate(words):
        if i == 0:
            text = text[0].upper() + text[1:]
        elif label != "punct":
            out.append(ord(" "))
            labels.append(LABEL_ID["space"])
        encoded = text.encode("ascii")
        out += encoded
        labels += bytes([LABEL_ID[label]]) * len(encoded)
    out.append(ord("\n"))
    labels.append(LABEL_ID["space"])


@lru_cache(maxsize=4)
def _generate(seed: int, sentences: int) -> tuple[bytes, bytes]:
    sampler = _Sampler(random.Random(seed))
    out, labels = bytearray(), bytearray()
    for _ in range(sentences):
        _render(sampler.sentence(), out, labels)
    return bytes(out), bytes(labels)


def grammar_corpus(seed: int, sentences: int) -> tuple[np.ndarray, np.ndarray]:
    """(bytes as uint8 [N], class id per byte as uint8 [N]); deterministic in (seed, sentences)."""
    text, labels = _generate(seed, sentences)
    return np.frombuffer(text, dtype=np.uint8).copy(), np.frombuffer(labels, dtype=np.uint8).copy()
