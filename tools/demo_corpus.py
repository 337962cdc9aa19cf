"""Deterministic generator of the SYNTHETIC ASL-gloss -> English demo corpus.

The corpus is SYNTHETIC: every pair is produced by the sentence templates and the
small vocabulary in this file, seeded with ``random.Random(seed)``. It is NOT real
signing data, it was not produced or checked by signers, and it only mimics a few
textbook conventions of ASL glossing. Use it for smoke tests, demos and to check
that fine-tuning learns something; never for claims about sign language
translation.

Regenerate the shipped files (``slt_hydra/resources/demo/{train,dev,test}.jsonl``)
with::

    python -m tools.demo_corpus                      # seed 13, 600/100/100
    python -m tools.demo_corpus --out DIR --seed 7 --train 600 --dev 100 --test 100

The output only depends on the arguments (pure stdlib, no hashing of sets, no
clock), so the same command writes the same bytes on every machine.

Gloss notation (the ``source`` side), tokens separated by single spaces:

* lexical signs are UPPER-CASE English glosses; a multi-word gloss is joined with
  hyphens (``ICE-CREAM``, ``LAST-WEEK``, ``HOW-MANY``);
* pointing: ``IX-1`` (I/me), ``IX-2`` (you), ``IX-3`` (pointing at an established
  referent; only used right after the name or noun it points at), ``IX-1-PL``
  (we), ``IX-3-PL`` (they); possessives ``POSS-1`` (my), ``POSS-2`` (your),
  ``POSS-1-PL`` (our), ``fs-NAME POSS-3`` (Name's);
* fingerspelled names and cities: lower-case ``fs-`` prefix, ``fs-JOHN``, ``fs-BOSTON``;
* a time sign (``YESTERDAY``, ``LAST-WEEK``, ``TOMORROW``, ``NEXT-YEAR``, ``LATER``,
  ``EVERY-DAY``, ``NOW`` ...) always comes first and sets the English tense; without
  one the sentence is in the present; verbs are never inflected;
* no articles and no copula (``POSS-1 CAR NEW`` = "My car is new.");
  attributive adjectives follow the noun (``BUY CAR NEW`` = "bought a new car");
* topic-comment: a topicalised object may open the sentence (``COFFEE IX-1 LIKE``);
* ``FINISH`` after the subject marks the perfective ("has already ..."), ``WILL``
  the future, ``WANT`` + verb "want to ...";
* negation: ``NOT`` at the end of the sentence, ``NONE`` after the noun it denies
  (``IX-1 HAVE MONEY NONE`` = "I have no money.");
* plurals by a number or ``MANY`` before an uninflected noun (``THREE CAT``);
* wh-questions end with the wh-sign (``WHAT``, ``WHO``, ``WHERE``, ``WHY``,
  ``HOW-MANY``); yes/no questions end with the token ``?`` (standing for the raised
  eyebrows). No other punctuation appears in glosses.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

DEFAULT_SEED = 13
DEFAULT_SIZES = {"train": 600, "dev": 100, "test": 100}
SPLITS = ("train", "dev", "test")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "slt_hydra" / "resources" / "demo"

# Length limits every pair respects (inclusive): gloss tokens (``?`` counts) and English words.
MIN_GLOSS_TOKENS, MAX_GLOSS_TOKENS = 3, 10
MIN_ENGLISH_WORDS, MAX_ENGLISH_WORDS = 4, 14

# One gloss token: fingerspelling, a (hyphenated) upper-case gloss, or the yes/no-question marker.
GLOSS_TOKEN_RE = re.compile(r"^(?:fs-[A-Z]+|[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)*|\?)$")
WH_SIGNS = ("WHAT", "WHO", "WHERE", "WHY", "HOW-MANY")


# ---------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Verb:
    gloss: str
    base: str
    s: str  # 3rd person singular present
    past: str
    pp: str  # past participle
    ing: str
    progressive: bool = True  # may take NOW (present progressive)


def _v(gloss: str, base: str, s: str, past: str, pp: str, ing: str, progressive: bool = True) -> Verb:
    return Verb(gloss, base, s, past, pp, ing, progressive)


BUY = _v("BUY", "buy", "buys", "bought", "bought", "buying")
EAT = _v("EAT", "eat", "eats", "ate", "eaten", "eating")
DRINK = _v("DRINK", "drink", "drinks", "drank", "drunk", "drinking")
READ = _v("READ", "read", "reads", "read", "read", "reading")
WATCH = _v("WATCH", "watch", "watches", "watched", "watched", "watching")
WRITE = _v("WRITE", "write", "writes", "wrote", "written", "writing")
COOK = _v("COOK", "cook", "cooks", "cooked", "cooked", "cooking")
CLEAN = _v("CLEAN", "clean", "cleans", "cleaned", "cleaned", "cleaning")
PLAY = _v("PLAY", "play", "plays", "played", "played", "playing")
SEE = _v("SEE", "see", "sees", "saw", "seen", "seeing", progressive=False)
MEET = _v("MEET", "meet", "meets", "met", "met", "meeting")
CALL = _v("CALL", "call", "calls", "called", "called", "calling")
HELP = _v("HELP", "help", "helps", "helped", "helped", "helping")
VISIT = _v("VISIT", "visit", "visits", "visited", "visited", "visiting")
GO = _v("GO", "go", "goes", "went", "gone", "going")
WORK = _v("WORK", "work", "works", "worked", "worked", "working")
STUDY = _v("STUDY", "study", "studies", "studied", "studied", "studying")
LIKE = _v("LIKE", "like", "likes", "liked", "liked", "liking", progressive=False)
WANT = _v("WANT", "want", "wants", "wanted", "wanted", "wanting", progressive=False)
HAVE = _v("HAVE", "have", "has", "had", "had", "having", progressive=False)
LIVE = _v("LIVE", "live", "lives", "lived", "lived", "living", progressive=False)


@dataclass(frozen=True)
class Noun:
    gloss: str
    sing: str
    plural: str
    kind: str = "count"  # count | mass | bare (never an article: TV, dinner) | the (always "the")


def _noun_table(rows: Sequence[Tuple[str, str, str, str]]) -> Dict[str, Noun]:
    return {g: Noun(g, s, p, k) for g, s, p, k in rows}


NOUNS: Dict[str, Noun] = _noun_table([
    # things
    ("CAR", "car", "cars", "count"), ("BOOK", "book", "books", "count"),
    ("PHONE", "phone", "phones", "count"), ("COMPUTER", "computer", "computers", "count"),
    ("BIKE", "bike", "bikes", "count"), ("SHIRT", "shirt", "shirts", "count"),
    ("HOUSE", "house", "houses", "count"), ("TICKET", "ticket", "tickets", "count"),
    ("BAG", "bag", "bags", "count"), ("ROOM", "room", "rooms", "count"),
    ("KITCHEN", "kitchen", "kitchens", "count"),
    # animals
    ("DOG", "dog", "dogs", "count"), ("CAT", "cat", "cats", "count"), ("BIRD", "bird", "birds", "count"),
    # food and drink
    ("PIZZA", "pizza", "pizzas", "mass"), ("FISH", "fish", "fish", "mass"),
    ("BREAD", "bread", "bread", "mass"), ("CAKE", "cake", "cakes", "mass"),
    ("SOUP", "soup", "soups", "mass"), ("ICE-CREAM", "ice cream", "ice cream", "mass"),
    ("APPLE", "apple", "apples", "count"), ("SANDWICH", "sandwich", "sandwiches", "count"),
    ("COFFEE", "coffee", "coffee", "mass"), ("TEA", "tea", "tea", "mass"),
    ("WATER", "water", "water", "mass"), ("MILK", "milk", "milk", "mass"),
    ("JUICE", "juice", "juice", "mass"),
    ("DINNER", "dinner", "dinners", "bare"), ("BREAKFAST", "breakfast", "breakfasts", "bare"),
    ("LUNCH", "lunch", "lunches", "bare"),
    # reading, writing, watching, playing
    ("NEWSPAPER", "newspaper", "newspapers", "the"), ("LETTER", "letter", "letters", "count"),
    ("MAGAZINE", "magazine", "magazines", "count"), ("EMAIL", "email", "emails", "count"),
    ("STORY", "story", "stories", "count"), ("REPORT", "report", "reports", "count"),
    ("MOVIE", "movie", "movies", "count"), ("TV", "TV", "TV", "bare"),
    ("NEWS", "news", "news", "the"), ("GAME", "game", "games", "the"),
    ("BASKETBALL", "basketball", "basketball", "bare"), ("SOCCER", "soccer", "soccer", "bare"),
    ("CARDS", "cards", "cards", "bare"),
    # people counted with numbers
    ("BROTHER", "brother", "brothers", "count"), ("SISTER", "sister", "sisters", "count"),
    ("CHILD", "child", "children", "count"), ("FRIEND", "friend", "friends", "count"),
    # things one can lack
    ("MONEY", "money", "money", "mass"), ("TIME", "time", "time", "mass"),
    ("JOB", "job", "jobs", "count"), ("HOMEWORK", "homework", "homework", "mass"),
])

# verb -> nouns it takes as object; det: which English determiner the object gets by default
THING_VERBS: List[Tuple[Verb, Tuple[str, ...], str]] = [
    (BUY, ("CAR", "BOOK", "PHONE", "COMPUTER", "BIKE", "SHIRT", "HOUSE", "TICKET", "BAG"), "indef"),
    (EAT, ("PIZZA", "FISH", "BREAD", "CAKE", "SOUP", "ICE-CREAM", "APPLE", "SANDWICH"), "indef"),
    (DRINK, ("COFFEE", "TEA", "WATER", "MILK", "JUICE"), "indef"),
    (READ, ("BOOK", "NEWSPAPER", "LETTER", "MAGAZINE"), "indef"),
    (WATCH, ("MOVIE", "TV", "NEWS", "GAME"), "indef"),
    (WRITE, ("LETTER", "EMAIL", "STORY", "REPORT"), "indef"),
    (COOK, ("DINNER", "BREAKFAST", "LUNCH", "SOUP", "PIZZA", "FISH"), "indef"),
    (CLEAN, ("HOUSE", "ROOM", "KITCHEN", "CAR"), "def"),
    (PLAY, ("BASKETBALL", "SOCCER", "CARDS"), "indef"),
]
PERSON_VERBS: Tuple[Verb, ...] = (SEE, MEET, CALL, HELP, VISIT)
LIKEABLE = ("PIZZA", "FISH", "CAKE", "ICE-CREAM", "APPLE", "COFFEE", "TEA", "MILK", "JUICE",
            "DOG", "CAT", "BIRD", "MOVIE", "BOOK", "SOCCER", "BASKETBALL")
WANTABLE = ("COFFEE", "TEA", "WATER", "JUICE", "PIZZA", "CAKE", "ICE-CREAM", "APPLE", "SANDWICH",
            "CAR", "PHONE", "COMPUTER", "BIKE", "DOG", "CAT")
OWNABLE = ("CAR", "PHONE", "COMPUTER", "BIKE", "HOUSE", "DOG", "CAT", "BIRD", "BAG")
COUNTABLE = ("CAR", "BOOK", "COMPUTER", "BIKE", "DOG", "CAT", "BIRD", "BROTHER", "SISTER", "CHILD",
             "TICKET", "SHIRT", "APPLE", "FRIEND")  # HAVE NUMBER NOUN, HOW-MANY
BUY_COUNTABLE = ("CAR", "BOOK", "COMPUTER", "BIKE", "PHONE", "BAG", "TICKET", "SHIRT", "APPLE", "SANDWICH")
LACKABLE = ("MONEY", "TIME", "JOB", "HOMEWORK", "CAR", "PHONE", "COMPUTER", "BIKE")
POSSESSIONS = ("CAR", "HOUSE", "PHONE", "COMPUTER", "BIKE", "BAG", "ROOM", "SHIRT", "DOG", "CAT")
ANIMALS = ("DOG", "CAT", "BIRD")

THING_ADJS = {"NEW": "new", "OLD": "old", "BIG": "big", "SMALL": "small", "RED": "red", "BLUE": "blue",
              "EXPENSIVE": "expensive", "CHEAP": "cheap", "CLEAN": "clean", "DIRTY": "dirty"}
BUYABLE_ADJS = ("NEW", "OLD", "RED", "BLUE", "EXPENSIVE", "CHEAP", "BIG", "SMALL")
BUYABLE_ADJS_FOR = {"TICKET": ("CHEAP", "EXPENSIVE")}  # exceptions to BUYABLE_ADJS
ANIMAL_ADJS = {"BIG": "big", "SMALL": "small", "OLD": "old", "CUTE": "cute", "HUNGRY": "hungry"}
PERSON_ADJS = {"TIRED": "tired", "HAPPY": "happy", "SICK": "sick", "BUSY": "busy", "HUNGRY": "hungry",
               "SAD": "sad", "LATE": "late", "ANGRY": "angry"}
NUMBERS = {"ONE": "one", "TWO": "two", "THREE": "three", "FOUR": "four", "FIVE": "five", "MANY": "many"}

NAMES = ("JOHN", "MARY", "ANNA", "DAVID", "LISA", "MARK", "SARAH", "TOM", "EMMA", "PAUL", "KEVIN", "JANE")
CITIES = ("BOSTON", "CHICAGO", "DENVER", "SEATTLE", "LONDON", "PARIS", "TORONTO", "DALLAS")

# place gloss -> (English after GO, English after WORK/STUDY "at ...")
PLACES: Dict[str, Tuple[str, str]] = {
    "SCHOOL": ("to school", "at school"), "WORK": ("to work", "at work"), "HOME": ("home", "at home"),
    "STORE": ("to the store", "at the store"), "LIBRARY": ("to the library", "at the library"),
    "PARK": ("to the park", "in the park"), "HOSPITAL": ("to the hospital", "at the hospital"),
    "RESTAURANT": ("to the restaurant", "at the restaurant"), "BEACH": ("to the beach", "at the beach"),
    "CHURCH": ("to church", "at church"), "DOCTOR": ("to the doctor", "at the doctor"),
}
WORK_PLACES = ("HOME", "STORE", "LIBRARY", "HOSPITAL", "RESTAURANT", "SCHOOL")
STUDY_PLACES = ("HOME", "LIBRARY", "SCHOOL")


@dataclass(frozen=True)
class Time:
    gloss: str
    en: str
    tense: str  # past | future | habitual | progressive
    front: bool  # English puts it at the start of a statement (questions always put it last)


TIMES: Tuple[Time, ...] = (
    Time("YESTERDAY", "yesterday", "past", True), Time("LAST-NIGHT", "last night", "past", True),
    Time("LAST-WEEK", "last week", "past", True), Time("LAST-MONTH", "last month", "past", True),
    Time("LAST-YEAR", "last year", "past", True),
    Time("TOMORROW", "tomorrow", "future", True), Time("NEXT-WEEK", "next week", "future", True),
    Time("NEXT-MONTH", "next month", "future", True), Time("NEXT-YEAR", "next year", "future", True),
    Time("LATER", "later", "future", False),
    Time("EVERY-DAY", "every day", "habitual", False), Time("EVERY-MORNING", "every morning", "habitual", False),
    Time("NOW", "now", "progressive", False),
)
TIME_SIGNS = tuple(t.gloss for t in TIMES)
_T = {t.gloss: t for t in TIMES}
PAST_TIMES = tuple(t for t in TIMES if t.tense == "past")
FUTURE_TIMES = tuple(t for t in TIMES if t.tense == "future" and t.front)  # TOMORROW .. NEXT-YEAR
NOW = _T["NOW"]
# times that go with a passing state (tired, busy ...): no habitual, no far past or future
STATE_PAST = (_T["YESTERDAY"], _T["LAST-NIGHT"], _T["LAST-WEEK"])
STATE_FUTURE = (_T["TOMORROW"], _T["NEXT-WEEK"], _T["LATER"])
# times that go with a lasting state (have a dog, like fish, live in Boston)
LONG_PAST = (_T["LAST-MONTH"], _T["LAST-YEAR"])


@dataclass(frozen=True)
class Person:
    gloss: Tuple[str, ...]
    en: str  # as inside a sentence (lower-case except "I" and names)
    obj: str  # object form
    agr: str  # 1s | 2 | 3s | 1p | 3p


PRONOUNS = (
    Person(("IX-1",), "I", "me", "1s"), Person(("IX-2",), "you", "you", "2"),
    Person(("IX-1-PL",), "we", "us", "1p"), Person(("IX-3-PL",), "they", "them", "3p"),
)
KIN = {"MOTHER": "mother", "FATHER": "father", "SISTER": "sister", "BROTHER": "brother",
       "FRIEND": "friend", "TEACHER": "teacher", "BOSS": "boss"}
POSSESSORS = {"POSS-1": "my", "POSS-2": "your", "POSS-1-PL": "our"}
OUR_KIN = ("BOSS", "FRIEND", "TEACHER")  # POSS-1-PL + singular kin: only where "our ..." is natural


def _name(n: str) -> str:
    return n.capitalize()


# ---------------------------------------------------------------------------
# Sampling helpers
# ---------------------------------------------------------------------------


def _person(rng: random.Random, *, pronoun_ok: bool = True, plural_ok: bool = True) -> Person:
    r = rng.random()
    if pronoun_ok and r < 0.4:
        choices = [p for p in PRONOUNS if plural_ok or p.agr in ("1s", "2")]
        return rng.choice(choices)
    if r < 0.72:
        n = rng.choice(NAMES)
        return Person(("fs-" + n,), _name(n), _name(n), "3s")
    poss = rng.choice(sorted(POSSESSORS))
    if plural_ok and rng.random() < 0.15:
        return Person((poss, "PARENTS"), f"{POSSESSORS[poss]} parents", f"{POSSESSORS[poss]} parents", "3p")
    kin = rng.choice(OUR_KIN if poss == "POSS-1-PL" else sorted(KIN))
    if rng.random() < 0.15:  # a named possessor: fs-JOHN POSS-3 SISTER = John's sister
        n = rng.choice(NAMES)
        return Person(("fs-" + n, "POSS-3", kin), f"{_name(n)}'s {KIN[kin]}", f"{_name(n)}'s {KIN[kin]}", "3s")
    return Person((poss, kin), f"{POSSESSORS[poss]} {KIN[kin]}", f"{POSSESSORS[poss]} {KIN[kin]}", "3s")


def _asked(rng: random.Random, p_you: float = 0.5) -> Person:
    """Subject of a question: "you" with probability p_you, else anyone but I / we."""
    if rng.random() < p_you:
        return PRONOUNS[1]
    while True:
        p = _person(rng)
        if p.agr not in ("1s", "1p"):
            return p


def _object_person(rng: random.Random, subj: Person) -> Person:
    while True:
        r = rng.random()
        if r < 0.25:
            p = rng.choice(PRONOUNS[:2])  # me / you
        elif r < 0.7:
            n = rng.choice(NAMES)
            p = Person(("fs-" + n,), _name(n), _name(n), "3s")
        else:
            poss = rng.choice(("POSS-1", "POSS-2"))
            kin = rng.choice(sorted(KIN))
            p = Person((poss, kin), f"{POSSESSORS[poss]} {KIN[kin]}", f"{POSSESSORS[poss]} {KIN[kin]}", "3s")
        clash = p.gloss == subj.gloss or (p.agr == "1s" and subj.agr in ("1s", "1p")) or (
            p.agr == "2" and subj.agr == "2")
        if not clash:
            return p


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _np(noun: Noun, mode: str, adj: Optional[str] = None) -> str:
    """English noun phrase. mode: indef | def | generic."""
    head = f"{adj} {noun.sing}" if adj else noun.sing
    if noun.kind == "bare":
        return head
    if noun.kind == "the" or mode == "def":
        return "the " + head
    if mode == "generic":
        return noun.plural if noun.kind == "count" else head
    return _article(head) if noun.kind == "count" else head


def _be(agr: str, tense: str) -> str:
    if tense == "past":
        return "was" if agr in ("1s", "3s") else "were"
    if tense == "future":
        return "will be"
    return {"1s": "am", "3s": "is"}.get(agr, "are")


def _do(agr: str, tense: str) -> str:
    if tense == "past":
        return "did"
    if tense == "future":
        return "will"
    return "does" if agr == "3s" else "do"


def _finite(v: Verb, agr: str, tense: str) -> str:
    if tense == "past":
        return v.past
    if tense == "future":
        return "will " + v.base
    if tense == "progressive":
        return f"{_be(agr, 'present')} {v.ing}"
    return v.s if agr == "3s" else v.base


def _negated(v: Verb, agr: str, tense: str) -> str:
    if tense == "progressive":
        return f"{_be(agr, 'present')} not {v.ing}"
    return f"{_do(agr, tense)} not {v.base}"


def _inverted(v: Verb, subj: Person, tense: str) -> str:
    """Auxiliary + subject + verb of a question: 'did John buy', 'are you eating'."""
    if tense == "progressive":
        return f"{_be(subj.agr, 'present')} {subj.en} {v.ing}"
    return f"{_do(subj.agr, tense)} {subj.en} {v.base}"


def _sentence(words: str, question: bool = False) -> str:
    words = " ".join(words.split())
    return words[0].upper() + words[1:] + ("?" if question else ".")


def _statement(time: Optional[Time], clause: str) -> str:
    if time is None:
        return _sentence(clause)
    if time.front:
        return _sentence(f"{time.en} {clause}")
    return _sentence(f"{clause} {time.en}")


def _question(time: Optional[Time], clause: str) -> str:
    return _sentence(f"{clause} {time.en}" if time else clause, question=True)


def _tense(time: Optional[Time]) -> str:
    if time is None:
        return "present"
    return "present" if time.tense == "habitual" else time.tense


@dataclass(frozen=True)
class VP:
    verb: Verb
    gloss: Tuple[str, ...]  # object / place glosses after the verb
    en: str  # English complement for statements
    en_def: str  # with a definite object (after FINISH)
    gap: str  # wh-word that questions the complement: WHAT | WHO | WHERE


def _thing_vp(rng: random.Random, adj_ok: bool = True) -> VP:
    verb, objs, det = rng.choice(THING_VERBS)
    noun = NOUNS[rng.choice(objs)]
    if verb is BUY and adj_ok and rng.random() < 0.4:
        adj = rng.choice(BUYABLE_ADJS_FOR.get(noun.gloss, BUYABLE_ADJS))
        gl = (noun.gloss, adj)
        en = _np(noun, det, THING_ADJS[adj])
        return VP(verb, gl, en, _np(noun, "def", THING_ADJS[adj]), "WHAT")
    return VP(verb, (noun.gloss,), _np(noun, det), _np(noun, "def"), "WHAT")


def _person_vp(rng: random.Random, subj: Person) -> VP:
    obj = _object_person(rng, subj)
    return VP(rng.choice(PERSON_VERBS), obj.gloss, obj.obj, obj.obj, "WHO")


def _place_vp(rng: random.Random) -> VP:
    r = rng.random()
    if r < 0.6:
        if rng.random() < 0.2:
            c = rng.choice(CITIES)
            return VP(GO, ("fs-" + c,), "to " + _name(c), "to " + _name(c), "WHERE")
        p = rng.choice(sorted(PLACES))
        return VP(GO, (p,), PLACES[p][0], PLACES[p][0], "WHERE")
    verb, places = (WORK, WORK_PLACES) if r < 0.8 else (STUDY, STUDY_PLACES)
    p = rng.choice(places)
    return VP(verb, (p,), PLACES[p][1], PLACES[p][1], "WHERE")


def _event_vp(rng: random.Random, subj: Person) -> VP:
    r = rng.random()
    if r < 0.5:
        return _thing_vp(rng)
    if r < 0.75:
        return _person_vp(rng, subj)
    return _place_vp(rng)


def _time_for(rng: random.Random, vp: VP) -> Time:
    while True:
        t = rng.choice(TIMES)
        if t.tense == "progressive" and not vp.verb.progressive:
            continue  # no "is seeing"
        if t.tense == "habitual" and vp.verb is BUY:
            continue  # no "buys a car every day"
        return t


def _g(*parts) -> str:
    out: List[str] = []
    for p in parts:
        if p is None:
            continue
        if isinstance(p, (tuple, list)):
            out.extend(p)
        else:
            out.append(p)
    return " ".join(out)


# ---------------------------------------------------------------------------
# Templates: each returns (gloss source, English target)
# ---------------------------------------------------------------------------

Pair = Tuple[str, str]


def t_time_statement(rng: random.Random) -> Pair:
    """TIME SUBJ VERB OBJ: YESTERDAY fs-JOHN BUY CAR NEW -> Yesterday John bought a new car."""
    subj = _person(rng)
    vp = _event_vp(rng, subj)
    time = _time_for(rng, vp)
    clause = f"{subj.en} {_finite(vp.verb, subj.agr, _tense(time))} {vp.en}"
    return _g(time.gloss, subj.gloss, vp.verb.gloss, vp.gloss), _statement(time, clause)


def _state_time(rng: random.Random, adj: str, options: Sequence[Optional[Time]]) -> Optional[Time]:
    time = rng.choice(options)
    return _T["TOMORROW"] if adj == "LATE" and time is _T["LATER"] else time  # not "late later"


def t_adjective(rng: random.Random) -> Pair:
    """[TIME] SUBJ [IX-3] ADJ (no copula): YESTERDAY IX-1 SICK -> Yesterday I was sick."""
    subj = _person(rng)
    adj = rng.choice(sorted(PERSON_ADJS))
    time = _state_time(rng, adj, (None, None, rng.choice(STATE_PAST), rng.choice(STATE_FUTURE), NOW))
    ix = ("IX-3",) if subj.agr == "3s" and len(subj.gloss) == 1 and rng.random() < 0.5 else ()
    tense = "present" if time is None or time.tense == "progressive" else time.tense
    clause = f"{subj.en} {_be(subj.agr, tense)} {PERSON_ADJS[adj]}"
    return _g(time.gloss if time else None, subj.gloss, ix, adj), _statement(time, clause)


def _possession(rng: random.Random, movable: bool = False) -> Tuple[Tuple[str, ...], str, Noun]:
    noun = NOUNS[rng.choice([n for n in POSSESSIONS if not (movable and n in ("HOUSE", "ROOM"))])]
    if rng.random() < 0.3:
        n = rng.choice(NAMES)
        return ("fs-" + n, "POSS-3", noun.gloss), f"{_name(n)}'s {noun.sing}", noun
    poss = rng.choice(sorted(POSSESSORS))
    return (poss, noun.gloss), f"{POSSESSORS[poss]} {noun.sing}", noun


def t_possession_adjective(rng: random.Random) -> Pair:
    """POSS NOUN [IX-3] ADJ: POSS-1 CAR IX-3 NEW -> My car is new."""
    gloss, en, noun = _possession(rng)
    adjs = ANIMAL_ADJS if noun.gloss in ANIMALS else THING_ADJS
    adj = rng.choice(sorted(adjs))
    ix = ("IX-3",) if rng.random() < 0.35 else ()
    return _g(gloss, ix, adj), _sentence(f"{en} is {adjs[adj]}")


def _stative_vp(rng: random.Random) -> VP:
    r = rng.random()
    if r < 0.35:
        n = NOUNS[rng.choice(LIKEABLE)]
        return VP(LIKE, (n.gloss,), _np(n, "generic"), _np(n, "def"), "WHAT")
    if r < 0.65:
        n = NOUNS[rng.choice(WANTABLE)]
        return VP(WANT, (n.gloss,), _np(n, "indef"), _np(n, "def"), "WHAT")
    if r < 0.85:
        n = NOUNS[rng.choice(OWNABLE)]
        return VP(HAVE, (n.gloss,), _np(n, "indef"), _np(n, "def"), "WHAT")
    c = rng.choice(CITIES)
    return VP(LIVE, ("fs-" + c,), "in " + _name(c), "in " + _name(c), "WHERE")


def t_stative(rng: random.Random) -> Pair:
    """[PAST-TIME] SUBJ LIKE/WANT/HAVE/LIVE OBJ: IX-1 LIKE CAT -> I like cats."""
    subj = _person(rng)
    vp = _stative_vp(rng)
    time = rng.choice(LONG_PAST) if rng.random() < 0.25 else None
    clause = f"{subj.en} {_finite(vp.verb, subj.agr, _tense(time))} {vp.en}"
    return _g(time.gloss if time else None, subj.gloss, vp.verb.gloss, vp.gloss), _statement(time, clause)


def t_topic_comment(rng: random.Random) -> Pair:
    """OBJ SUBJ LIKE/WANT [NOT] (topicalised object): COFFEE IX-1 LIKE NOT -> I do not like coffee."""
    subj = _person(rng)
    if rng.random() < 0.5:
        n = NOUNS[rng.choice(LIKEABLE)]
        verb, obj = LIKE, _np(n, "generic")
    else:
        n = NOUNS[rng.choice(WANTABLE)]
        verb, obj = WANT, _np(n, "indef")
    neg = rng.random() < 0.4
    vg = _negated(verb, subj.agr, "present") if neg else _finite(verb, subj.agr, "present")
    return _g(n.gloss, subj.gloss, verb.gloss, "NOT" if neg else None), _sentence(f"{subj.en} {vg} {obj}")


def t_negation(rng: random.Random) -> Pair:
    """[TIME] SUBJ VERB OBJ NOT: YESTERDAY IX-1 GO WORK NOT -> Yesterday I did not go to work."""
    subj = _person(rng)
    if rng.random() < 0.35:
        vp, time = _stative_vp(rng), None
    else:
        vp = _event_vp(rng, subj)
        time = _time_for(rng, vp)
    clause = f"{subj.en} {_negated(vp.verb, subj.agr, _tense(time))} {vp.en}"
    return _g(time.gloss if time else None, subj.gloss, vp.verb.gloss, vp.gloss, "NOT"), _statement(time, clause)


def t_none(rng: random.Random) -> Pair:
    """[PAST-TIME] SUBJ HAVE NOUN NONE: IX-1 HAVE MONEY NONE -> I have no money."""
    subj = _person(rng)
    n = NOUNS[rng.choice(LACKABLE)]
    time = rng.choice(PAST_TIMES) if rng.random() < 0.3 else None
    clause = f"{subj.en} {_finite(HAVE, subj.agr, _tense(time))} no {n.sing}"
    return _g(time.gloss if time else None, subj.gloss, HAVE.gloss, n.gloss, "NONE"), _statement(time, clause)


def t_yes_no_verb(rng: random.Random) -> Pair:
    """[TIME] SUBJ VERB OBJ ?: YESTERDAY IX-2 SEE fs-MARY ? -> Did you see Mary yesterday?"""
    subj = _person(rng)
    if subj.agr == "1s":
        subj = PRONOUNS[1]
    if rng.random() < 0.3:
        vp, time = _stative_vp(rng), None
    else:
        vp = _event_vp(rng, subj)
        time = _time_for(rng, vp)
    clause = f"{_inverted(vp.verb, subj, _tense(time))} {vp.en}"
    return _g(time.gloss if time else None, subj.gloss, vp.verb.gloss, vp.gloss, "?"), _question(time, clause)


def t_yes_no_adjective(rng: random.Random) -> Pair:
    """[TIME] SUBJ ADJ ?: NOW IX-2 HUNGRY ? -> Are you hungry now?"""
    subj = _asked(rng, 0.4)
    adj = rng.choice(sorted(PERSON_ADJS))
    time = _state_time(rng, adj, (None, rng.choice(STATE_PAST), rng.choice(STATE_FUTURE), NOW))
    tense = "present" if time is None or time.tense == "progressive" else time.tense
    be = _be(subj.agr, tense)
    clause = f"will {subj.en} be" if tense == "future" else f"{be} {subj.en}"
    return _g(time.gloss if time else None, subj.gloss, adj, "?"), _question(time, f"{clause} {PERSON_ADJS[adj]}")


def t_wh_object(rng: random.Random) -> Pair:
    """TIME SUBJ VERB WHAT/WHO: YESTERDAY IX-2 BUY WHAT -> What did you buy yesterday?"""
    subj = _asked(rng)
    vp = _thing_vp(rng) if rng.random() < 0.6 else _person_vp(rng, subj)
    time = _time_for(rng, vp)
    wh = vp.gap
    clause = f"{wh.lower()} {_inverted(vp.verb, subj, _tense(time))}"
    return _g(time.gloss, subj.gloss, vp.verb.gloss, wh), _question(time, clause)


def t_wh_where(rng: random.Random) -> Pair:
    """[TIME] SUBJ GO/WORK/LIVE WHERE, POSS NOUN WHERE: IX-2 GO WHERE -> Where are you going?"""
    r = rng.random()
    if r < 0.25:
        gloss, en, noun = _possession(rng, movable=True)
        return _g(gloss, "IX-3" if rng.random() < 0.4 else None, "WHERE"), _sentence(f"where is {en}", True)
    subj = _asked(rng)
    if r < 0.4:
        return _g(subj.gloss, LIVE.gloss, "WHERE"), _question(None, f"where {_inverted(LIVE, subj, 'present')}")
    verb = rng.choice((GO, GO, WORK, STUDY))
    time = None if (verb is GO and rng.random() < 0.3) else rng.choice(TIMES)
    tense = "progressive" if time is None else _tense(time)
    return (_g(time.gloss if time else None, subj.gloss, verb.gloss, "WHERE"),
            _question(time, f"where {_inverted(verb, subj, tense)}"))


def t_wh_why(rng: random.Random) -> Pair:
    """[TIME] SUBJ ADJ WHY / TIME SUBJ VERB OBJ WHY: IX-2 SAD WHY -> Why are you sad?"""
    subj = _asked(rng, 0.3)
    if rng.random() < 0.5:
        adj = rng.choice(sorted(PERSON_ADJS))
        time = rng.choice((None, None, rng.choice(STATE_PAST)))
        tense = "present" if time is None else time.tense
        clause = f"why {_be(subj.agr, tense)} {subj.en} {PERSON_ADJS[adj]}"
        return _g(time.gloss if time else None, subj.gloss, adj, "WHY"), _question(time, clause)
    vp = _event_vp(rng, subj)
    time = _time_for(rng, vp)
    clause = f"why {_inverted(vp.verb, subj, _tense(time))} {vp.en}"
    return _g(time.gloss, subj.gloss, vp.verb.gloss, vp.gloss, "WHY"), _question(time, clause)


def t_how_many(rng: random.Random) -> Pair:
    """SUBJ HAVE NOUN HOW-MANY: IX-2 HAVE CAT HOW-MANY -> How many cats do you have?"""
    subj = _asked(rng)
    n = NOUNS[rng.choice(COUNTABLE)]
    return (_g(subj.gloss, HAVE.gloss, n.gloss, "HOW-MANY"),
            _question(None, f"how many {n.plural} {_inverted(HAVE, subj, 'present')}"))


def t_number(rng: random.Random) -> Pair:
    """[PAST-TIME] SUBJ HAVE/BUY NUMBER NOUN: IX-1 HAVE THREE CAT -> I have three cats."""
    subj = _person(rng)
    num = rng.choice(sorted(NUMBERS))
    if rng.random() < 0.5:
        verb, time, n = HAVE, (rng.choice(LONG_PAST) if rng.random() < 0.25 else None), NOUNS[rng.choice(COUNTABLE)]
    else:
        verb, time, n = BUY, rng.choice(PAST_TIMES + FUTURE_TIMES), NOUNS[rng.choice(BUY_COUNTABLE)]
    noun_en = n.sing if num == "ONE" else n.plural
    clause = f"{subj.en} {_finite(verb, subj.agr, _tense(time))} {NUMBERS[num]} {noun_en}"
    return _g(time.gloss if time else None, subj.gloss, verb.gloss, num, n.gloss), _statement(time, clause)


def t_finish(rng: random.Random) -> Pair:
    """SUBJ FINISH VERB OBJ [?]: fs-JOHN FINISH READ BOOK -> John has already read the book."""
    question = rng.random() < 0.3
    subj = _asked(rng) if question else _person(rng)
    have = "has" if subj.agr == "3s" else "have"
    if rng.random() < 0.15:  # intransitive: IX-1 FINISH EAT -> I have already eaten.
        gl, verb, obj = (), EAT, ""
    else:
        vp = _thing_vp(rng, adj_ok=False) if rng.random() < 0.7 else _person_vp(rng, subj)
        gl, verb, obj = vp.gloss, vp.verb, vp.en_def
    src = _g(subj.gloss, "FINISH", verb.gloss, gl, "?" if question else None)
    if question:
        return src, _question(None, f"{have} {subj.en} already {verb.pp} {obj}")
    return src, _sentence(f"{subj.en} {have} already {verb.pp} {obj}")


def t_will(rng: random.Random) -> Pair:
    """SUBJ WILL VERB OBJ: IX-1 WILL HELP fs-MARY -> I will help Mary."""
    subj = _person(rng)
    vp = _event_vp(rng, subj)
    return _g(subj.gloss, "WILL", vp.verb.gloss, vp.gloss), _sentence(f"{subj.en} will {vp.verb.base} {vp.en}")


def t_want_to(rng: random.Random) -> Pair:
    """SUBJ WANT VERB OBJ [NOT]: IX-1 WANT GO HOME -> I want to go home."""
    subj = _person(rng)
    vp = _event_vp(rng, subj)
    neg = rng.random() < 0.3
    want = _negated(WANT, subj.agr, "present") if neg else _finite(WANT, subj.agr, "present")
    return (_g(subj.gloss, WANT.gloss, vp.verb.gloss, vp.gloss, "NOT" if neg else None),
            _sentence(f"{subj.en} {want} to {vp.verb.base} {vp.en}"))


TEMPLATES: Tuple[Tuple[str, Callable[[random.Random], Pair]], ...] = (
    ("time_statement", t_time_statement),
    ("adjective", t_adjective),
    ("possession_adjective", t_possession_adjective),
    ("stative", t_stative),
    ("topic_comment", t_topic_comment),
    ("negation_not", t_negation),
    ("negation_none", t_none),
    ("yes_no_verb", t_yes_no_verb),
    ("yes_no_adjective", t_yes_no_adjective),
    ("wh_object", t_wh_object),
    ("wh_where", t_wh_where),
    ("wh_why", t_wh_why),
    ("how_many", t_how_many),
    ("number_plural", t_number),
    ("finish_perfective", t_finish),
    ("will_future", t_will),
    ("want_to", t_want_to),
)


# ---------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------


def _fits(source: str, target: str) -> bool:
    n_src, n_tgt = len(source.split()), len(target.split())
    return MIN_GLOSS_TOKENS <= n_src <= MAX_GLOSS_TOKENS and MIN_ENGLISH_WORDS <= n_tgt <= MAX_ENGLISH_WORDS


def generate(
    seed: int = DEFAULT_SEED, n_train: int = 600, n_dev: int = 100, n_test: int = 100
) -> Dict[str, List[dict]]:
    """Return {"train": [...], "dev": [...], "test": [...]} of {"source", "target"} dicts.

    Templates are used in turn (round-robin), so every template is about equally
    frequent. A pair is kept only if neither its source nor its target was produced
    before, so no source (and no target sentence) can appear in two splits. The
    unique pairs are shuffled and cut into train, dev and test; then a few pairs are
    swapped so that every gloss token of dev and test also occurs in train.
    """
    for name, n in (("n_train", n_train), ("n_dev", n_dev), ("n_test", n_test)):
        if n < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    rng = random.Random(seed)
    total = n_train + n_dev + n_test
    pairs: List[dict] = []
    seen_src: Dict[str, None] = {}
    seen_tgt: Dict[str, None] = {}
    attempts, max_attempts = 0, 200 * total + 1000
    i = 0
    while len(pairs) < total:
        attempts += 1
        if attempts > max_attempts:
            raise RuntimeError(f"could only generate {len(pairs)} unique pairs of the {total} asked for")
        _, template = TEMPLATES[i % len(TEMPLATES)]
        source, target = template(rng)
        if source in seen_src or target in seen_tgt or not _fits(source, target):
            continue  # same template again, so the mix stays balanced
        seen_src[source] = None
        seen_tgt[target] = None
        pairs.append({"source": source, "target": target})
        i += 1
    rng.shuffle(pairs)
    train, held = pairs[:n_train], pairs[n_train:]
    _cover_held_out_tokens(train, held)
    return {
        "train": train,
        "dev": held[:n_dev],
        "test": held[n_dev:],
    }


def _cover_held_out_tokens(train: List[dict], held: List[dict]) -> None:
    """Swap pairs in place so that every gloss token of ``held`` also occurs in ``train``.

    A held-out pair with a token that train lacks trades places with the last train
    pair whose tokens all occur elsewhere in train, so no coverage is lost. Pairs
    that cannot be covered (a tiny train split) stay where they are.
    """
    counts: Dict[str, int] = {}
    for row in train:
        for tok in row["source"].split():
            counts[tok] = counts.get(tok, 0) + 1
    for i, row in enumerate(held):
        if all(counts.get(tok, 0) for tok in row["source"].split()):
            continue
        for j in range(len(train) - 1, -1, -1):
            q_toks = train[j]["source"].split()
            if all(counts[tok] > q_toks.count(tok) for tok in q_toks):
                for tok in q_toks:
                    counts[tok] -= 1
                for tok in row["source"].split():
                    counts[tok] = counts.get(tok, 0) + 1
                train[j], held[i] = row, train[j]
                break


def dumps_split(rows: Sequence[dict]) -> str:
    """The exact text of one split file: one JSON object per line, "\\n" endings."""
    return "".join(json.dumps({"source": r["source"], "target": r["target"]}, ensure_ascii=False) + "\n"
                   for r in rows)


def write_corpus(out_dir, seed: int = DEFAULT_SEED, n_train: int = 600, n_dev: int = 100,
                 n_test: int = 100) -> Dict[str, Path]:
    """Generate the corpus and write train/dev/test.jsonl into out_dir; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = generate(seed=seed, n_train=n_train, n_dev=n_dev, n_test=n_test)
    paths = {}
    for split in SPLITS:
        path = out / f"{split}.jsonl"
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(dumps_split(splits[split]))
        paths[split] = path
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tools.demo_corpus",
        description="Write the SYNTHETIC (template-generated) ASL-gloss -> English demo corpus.")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output directory (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default: %(default)s)")
    ap.add_argument("--train", type=int, default=DEFAULT_SIZES["train"], help="train pairs (default: %(default)s)")
    ap.add_argument("--dev", type=int, default=DEFAULT_SIZES["dev"], help="dev pairs (default: %(default)s)")
    ap.add_argument("--test", type=int, default=DEFAULT_SIZES["test"], help="test pairs (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        paths = write_corpus(args.out, seed=args.seed, n_train=args.train, n_dev=args.dev, n_test=args.test)
    except (ValueError, RuntimeError) as e:
        ap.error(str(e))
    sizes = {"train": args.train, "dev": args.dev, "test": args.test}
    for split in SPLITS:
        print(f"{paths[split]}: {sizes[split]} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
