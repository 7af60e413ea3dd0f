"""The built-in world: a seeded fictional knowledge base that the demo searches, so it needs nothing from outside.

People, cities, countries and organisations with invented names (a model cannot know them beforehand),
linked by relations (born in, works for, married to, founded by, based in, city of). The world renders as

- a passage corpus, one or two facts per passage, plus distractor passages about the same entities
  (hobbies, products, what a city is known for) and shared first and last names, so a search has to
  name the right entity and the right relation;
- 1- to `max_hops`-hop questions with their gold answers (and aliases where natural: "Republic of
  Velmar" / "Velmar"), split into disjoint train / test / demo question sets;
- demonstration trajectories for the demo questions (`igpo_rlhf.world.demos`).

    igpo build-world runs/world [--seed 0] [-c CONFIG] [--set data.world.n_people=200]

writes corpus.jsonl, train.jsonl, test.jsonl, demos.jsonl and world.json. Same seed and settings,
byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from igpo_rlhf.config import WorldConfig
    from services.search_proxy.settings import Bm25Settings

FILES = ("corpus.jsonl", "train.jsonl", "test.jsonl", "demos.jsonl", "world.json")

# Invented words are built from these syllables; every word is used for one entity only.
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "m", "x")
_ORG_KINDS = ("Guild", "Foundry", "Press", "Institute", "Company", "Society", "Mills", "Bank", "Trust")
_COUNTRY_FORMS = ("Kingdom", "Republic", "Duchy", "Commonwealth")
_JOBS = ("engineer", "painter", "clerk", "surveyor", "teacher", "chemist", "archivist", "pilot", "weaver")
_HOBBIES = ("chess", "sailing", "gardening", "archery", "poetry", "fencing", "pottery", "astronomy", "music")
_FEATURES = ("harbour", "bridges", "markets", "libraries", "gardens", "towers", "canals", "festivals")
_PRODUCTS = ("lamps", "ropes", "clocks", "maps", "glass", "engines", "paper", "bells", "ink")


@dataclass(frozen=True)
class Person:
    name: str
    birth_city: str
    birth_year: int
    employer: str
    job: str
    spouse: str | None
    hobbies: tuple[str, str]


@dataclass(frozen=True)
class Org:
    name: str  # "Brimvale Foundry"
    alias: str  # "Brimvale"
    founder: str
    city: str
    founded: int
    product: str


@dataclass(frozen=True)
class City:
    name: str
    country: str
    feature: str


@dataclass(frozen=True)
class Country:
    name: str  # "Republic of Velmar"
    alias: str  # "Velmar"


@dataclass(frozen=True)
class World:
    people: dict[str, Person]
    orgs: dict[str, Org]
    cities: dict[str, City]
    countries: dict[str, Country]


@dataclass(frozen=True)
class Relation:
    """One hop: subject kind → object kind, and how questions, searches and reasoning phrase it."""

    name: str
    subject: str  # person | org | city
    obj: str  # person | org | city | country | year
    query: str  # the search a good agent makes for this hop; {x} = subject
    need: str  # what the agent is looking for, in its thinking; {x} = subject
    fact: str  # the fact as a sentence; {x} = subject, {y} = object
    question: str  # a question whose answer is the object; {x} = a noun phrase for the subject
    phrase: str | None  # a noun phrase for the object, to nest inside longer questions; {x} = subject phrase


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in (
        Relation(
            "born_in", "person", "city", "{x} born", "where {x} was born", "{x} was born in {y}",
            "Where was {x} born?", "the birthplace of {x}",
        ),
        Relation(
            "birth_year", "person", "year", "{x} born", "when {x} was born", "{x} was born in {y}",
            "In what year was {x} born?", None,
        ),
        Relation(
            "employer", "person", "org", "{x} works for", "who {x} works for", "{x} works for {y}",
            "Which organisation does {x} work for?", "the employer of {x}",
        ),
        Relation(
            "spouse", "person", "person", "{x} married", "who {x} is married to", "{x} is married to {y}",
            "Who is {x} married to?", "the spouse of {x}",
        ),
        Relation(
            "founder", "org", "person", "{x} founded by", "who founded {x}", "{x} was founded by {y}",
            "Who founded {x}?", "the founder of {x}",
        ),
        Relation(
            "based_in", "org", "city", "{x} based in", "where {x} is based", "{x} is based in {y}",
            "In which city is {x} based?", "the home city of {x}",
        ),
        Relation(
            "founded_year", "org", "year", "{x} founded", "when {x} was founded", "{x} was founded in {y}",
            "In what year was {x} founded?", None,
        ),
        Relation(
            "country", "city", "country", "{x} city", "which country {x} is in", "{x} is a city in the {y}",
            "In which country is {x}?", None,
        ),
    )
}  # fmt: skip


# --------------------------------------------------------------------------------------- the world
def _word(rng: random.Random, used: set[str]) -> str:
    """A new two-syllable invented word (about 1.4M exist), capitalised."""
    while True:
        w = "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(2)
        ).capitalize()
        if w not in used and len(w) >= 4:
            used.add(w)
            return w


def generate_world(n_people: int, seed: int) -> World:
    """A random world with `n_people` people; cities, countries and organisations scale with it."""
    if n_people < 4:
        raise ValueError(f"n_people={n_people}: the world needs at least 4 people")
    rng = random.Random(seed)
    used: set[str] = set()
    n_cities, n_orgs = max(3, n_people // 4), max(2, n_people // 3)
    n_countries = max(2, n_cities // 3)

    countries = {}
    for _ in range(n_countries):
        alias = _word(rng, used)
        c = Country(f"{rng.choice(_COUNTRY_FORMS)} of {alias}", alias)
        countries[c.name] = c
    country_names = list(countries)
    cities = {}
    for k in range(n_cities):
        name = _word(rng, used)
        # every country gets a city first, then the rest at random
        country = country_names[k] if k < n_countries else rng.choice(country_names)
        cities[name] = City(name, country, rng.choice(_FEATURES))
    city_names = list(cities)

    # names: first and last names drawn from pools smaller than the population, so people share them
    # (at least 3 x 3, and n/2 x n/3 >= n from n = 6 on: always enough distinct full names)
    firsts = [_word(rng, used) for _ in range(max(3, n_people // 2))]
    lasts = [_word(rng, used) for _ in range(max(3, n_people // 3))]
    names: list[str] = []
    taken: set[str] = set()
    while len(names) < n_people:
        name = f"{rng.choice(firsts)} {rng.choice(lasts)}"
        if name not in taken:
            taken.add(name)
            names.append(name)

    org_words = [_word(rng, used) for _ in range(n_orgs)]
    founders = rng.sample(names, n_orgs)  # each founder founds one organisation
    orgs = {}
    for alias, founder in zip(org_words, founders, strict=True):
        org = Org(
            f"{alias} {rng.choice(_ORG_KINDS)}",
            alias,
            founder,
            rng.choice(city_names),
            rng.randint(1820, 1990),
            rng.choice(_PRODUCTS),
        )
        orgs[org.name] = org
    org_names = list(orgs)

    married = rng.sample(names, 2 * int(0.3 * n_people))
    spouse = {}
    for a, b in zip(married[0::2], married[1::2], strict=True):
        spouse[a], spouse[b] = b, a
    people = {}
    for name in names:
        hobbies = rng.sample(_HOBBIES, 2)
        people[name] = Person(
            name,
            rng.choice(city_names),
            rng.randint(1800, 1990),
            rng.choice(org_names),
            rng.choice(_JOBS),
            spouse.get(name),
            (hobbies[0], hobbies[1]),
        )
    return World(people, orgs, cities, countries)


def follow(world: World, relation: str, subject: str) -> str | None:
    """The object of `relation` for `subject` (a name, or a year as a string), or None if it has none."""
    if relation == "born_in":
        return world.people[subject].birth_city
    if relation == "birth_year":
        return str(world.people[subject].birth_year)
    if relation == "employer":
        return world.people[subject].employer
    if relation == "spouse":
        return world.people[subject].spouse
    if relation == "founder":
        return world.orgs[subject].founder
    if relation == "based_in":
        return world.orgs[subject].city
    if relation == "founded_year":
        return str(world.orgs[subject].founded)
    if relation == "country":
        return world.cities[subject].country
    raise ValueError(f"relation {relation!r} is unknown; accepted: {', '.join(RELATIONS)}")


def aliases(world: World, kind: str, name: str) -> list[str]:
    """Gold aliases of an answer: the name, plus the short form of countries and organisations."""
    if kind == "country":
        return [name, world.countries[name].alias]
    if kind == "org":
        return [name, world.orgs[name].alias]
    return [name]


# ------------------------------------------------------------------------------------------ corpus
Fact = tuple[str, str]  # (relation, subject)


def _passages(world: World) -> list[tuple[str, str, tuple[Fact, ...]]]:
    """(title, text, facts it states) of every passage: the facts questions need, and distractors."""
    out: list[tuple[str, str, tuple[Fact, ...]]] = []
    for p in world.people.values():
        out.append(
            (
                p.name,
                f"{p.name} was born in {p.birth_city} in {p.birth_year}.",
                (("born_in", p.name), ("birth_year", p.name)),
            )
        )
        article = "an" if p.job[0] in "aeiou" else "a"
        out.append(
            (p.name, f"{p.name} works for {p.employer} as {article} {p.job}.", (("employer", p.name),))
        )
        if p.spouse is not None:
            out.append((p.name, f"{p.name} is married to {p.spouse}.", (("spouse", p.name),)))
        out.append((p.name, f"{p.name} enjoys {p.hobbies[0]} and {p.hobbies[1]}.", ()))  # distractor
    for o in world.orgs.values():
        out.append(
            (
                o.name,
                f"{o.name} was founded by {o.founder} in {o.founded}.",
                (("founder", o.name), ("founded_year", o.name)),
            )
        )
        out.append((o.name, f"{o.name} is based in {o.city}. It makes {o.product}.", (("based_in", o.name),)))
    for c in world.cities.values():
        out.append((c.name, f"{c.name} is a city in the {c.country}.", (("country", c.name),)))
        out.append((c.name, f"{c.name} is known for its {c.feature}.", ()))  # distractor
    for k in world.countries.values():
        n = sum(c.country == k.name for c in world.cities.values())
        out.append((k.name, f"The {k.name}, or {k.alias}, has {n} cities.", ()))  # distractor
    return out


def render_corpus(world: World) -> list[dict]:
    """Corpus rows `{"id", "title", "text", "contents"}` with contents = `"Title"\\ntext` (Search-R1 layout)."""
    return [
        {"id": str(k), "title": title, "text": text, "contents": f'"{title}"\n{text}'}
        for k, (title, text, _) in enumerate(_passages(world))
    ]


def fact_passage_ids(world: World) -> dict[Fact, str]:
    """(relation, subject) → id (in `render_corpus`) of the passage stating that fact."""
    return {fact: str(k) for k, (_, _, facts) in enumerate(_passages(world)) for fact in facts}


# --------------------------------------------------------------------------------------- questions
@dataclass(frozen=True)
class Question:
    """A multi-hop question: start entity, the chain of relations, the entities along the way."""

    start: str
    chain: tuple[str, ...]
    path: tuple[str, ...]  # start, then the object of each hop; path[-1] is the answer
    text: str
    answers: tuple[str, ...]

    @property
    def hops(self) -> int:
        return len(self.chain)


def _chains(max_hops: int) -> list[tuple[str, ...]]:
    """Every relation chain of 1..max_hops hops whose kinds line up (years end a chain)."""
    chains = [(r,) for r in RELATIONS]
    frontier = list(chains)
    for _ in range(max_hops - 1):
        frontier = [
            c + (r.name,)
            for c in frontier
            for r in RELATIONS.values()
            if r.subject == RELATIONS[c[-1]].obj and RELATIONS[c[-1]].phrase is not None
        ]
        chains += frontier
    return chains


def question_text(chain: tuple[str, ...], start: str) -> str:
    """The question for a chain: inner hops become nested noun phrases ("the founder of X")."""
    phrase = start
    for rel in chain[:-1]:
        phrase = RELATIONS[rel].phrase.format(x=phrase)
    return RELATIONS[chain[-1]].question.format(x=phrase)


def all_questions(world: World, max_hops: int) -> list[Question]:
    """Every answerable question of 1..max_hops hops whose path visits no entity twice."""
    if not 1 <= max_hops <= 3:
        raise ValueError(f"max_hops={max_hops}: questions take 1 to 3 hops")
    starts = {"person": list(world.people), "org": list(world.orgs), "city": list(world.cities)}
    out = []
    for chain in _chains(max_hops):
        for start in starts[RELATIONS[chain[0]].subject]:
            path = [start]
            for rel in chain:
                nxt = follow(world, rel, path[-1])
                if nxt is None or nxt in path:
                    break
                path.append(nxt)
            else:
                kind = RELATIONS[chain[-1]].obj
                out.append(
                    Question(
                        start,
                        chain,
                        tuple(path),
                        question_text(chain, start),
                        tuple(aliases(world, kind, path[-1])),
                    )
                )
    return out


def split_questions(
    questions: list[Question], sizes: dict[str, int], max_hops: int, rng: random.Random
) -> dict[str, list[Question]]:
    """Disjoint splits of the given sizes, each with (nearly) equal shares of 1.., 2.., max_hops-hop
    questions, so most of them need more than one search. Distinct question texts only."""
    by_hops: dict[int, list[Question]] = {h: [] for h in range(1, max_hops + 1)}
    seen = set()
    for q in questions:
        if q.text not in seen:
            seen.add(q.text)
            by_hops[q.hops].append(q)
    for pool in by_hops.values():
        rng.shuffle(pool)
    need = sum(sizes.values())
    avail = sum(len(p) for p in by_hops.values())
    if need > avail:
        raise ValueError(
            f"the world has {avail} distinct questions but {need} were asked for ({sizes}); "
            "raise data.world.n_people or lower the split sizes"
        )
    # interleave the hop pools (1, 2, 3, 1, 2, 3, ...) and skip exhausted ones, then cut into splits
    order: list[Question] = []
    while len(order) < need:
        for h in by_hops:
            if by_hops[h]:
                order.append(by_hops[h].pop())
    out, start = {}, 0
    for name, n in sizes.items():
        out[name] = order[start : start + n]
        start += n
    return out


def question_row(q: Question, qid: str) -> dict:
    """A question in our own jsonl format (`igpo_rlhf.data.datasets`): id, question, answers, + meta."""
    return {"id": qid, "question": q.text, "answers": list(q.answers), "hops": q.hops, "chain": list(q.chain)}


# ------------------------------------------------------------------------------------------ output
def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_world(
    out: str | Path, world_cfg: WorldConfig, *, search_top_k: int = 3, bm25: Bm25Settings | None = None
) -> dict:
    """Render the world `world_cfg` describes into `out` (files in FILES); returns the world.json summary.

    Demonstration searches keep the top `search_top_k` passages of the proxy's BM25 backend with `bm25`
    settings: pass rollout.search_top_k and search.proxy.bm25, so the demonstrated observations are the
    ones the rollouts will see."""
    from igpo_rlhf.world.demos import make_demos

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    world = generate_world(world_cfg.n_people, world_cfg.seed)
    corpus = render_corpus(world)
    rng = random.Random(world_cfg.seed + 1)
    sizes = {"train": world_cfg.n_train, "test": world_cfg.n_test, "demo": world_cfg.n_demos}
    splits = split_questions(all_questions(world, world_cfg.max_hops), sizes, world_cfg.max_hops, rng)
    rows = {
        name: [question_row(q, f"world-{name}-{k:05d}") for k, q in enumerate(qs)]
        for name, qs in splits.items()
    }
    demos, demo_stats = make_demos(
        world,
        splits["demo"],
        rows["demo"],
        corpus,
        search_top_k,
        bm25,
        skip_frac=world_cfg.demo_skip_frac,
        stop_frac=world_cfg.demo_stop_frac,
        seed=world_cfg.seed,
    )

    _write_jsonl(out / "corpus.jsonl", corpus)
    _write_jsonl(out / "train.jsonl", rows["train"])
    _write_jsonl(out / "test.jsonl", rows["test"])
    _write_jsonl(out / "demos.jsonl", demos)
    summary = {
        "seed": world_cfg.seed,
        "settings": _settings(world_cfg),
        "entities": {
            "people": len(world.people),
            "organisations": len(world.orgs),
            "cities": len(world.cities),
            "countries": len(world.countries),
        },
        "passages": len(corpus),
        "questions": {name: len(r) for name, r in rows.items()},
        "hops": {name: dict(sorted(Counter(str(q.hops) for q in qs).items())) for name, qs in splits.items()},
        "demos": demo_stats,
        "files": list(FILES),
    }
    (out / "world.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def world_is_built(world_dir: str | Path, world_cfg: WorldConfig) -> bool:
    """True when `world_dir` holds every file of a world built with exactly these settings."""
    d = Path(world_dir)
    if not all((d / f).is_file() for f in FILES):
        return False
    summary = json.loads((d / "world.json").read_text(encoding="utf-8"))
    return summary.get("settings") == _settings(world_cfg)


def _settings(world_cfg: WorldConfig) -> dict:
    """The settings that decide the world's content (not where it is written)."""
    return world_cfg.model_dump(mode="json", exclude={"dir"})


def main(argv: list[str] | None = None) -> int:
    """`igpo build-world OUT`: render the built-in world (corpus, QA splits, demonstrations) into OUT."""
    from igpo_rlhf.config import ConfigError, add_config_arguments, load_config

    ap = argparse.ArgumentParser(prog="igpo build-world", description=main.__doc__)
    ap.add_argument("out", help="output directory")
    ap.add_argument("--seed", type=int, default=None, help="world seed (default: data.world.seed)")
    add_config_arguments(ap, what="data.world sizes, rollout.search_top_k")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    world_cfg = cfg.data.world
    if args.seed is not None:
        world_cfg = world_cfg.model_copy(update={"seed": args.seed})
    summary = build_world(
        args.out, world_cfg, search_top_k=cfg.rollout.search_top_k, bm25=cfg.search.proxy.bm25
    )
    q = summary["questions"]
    print(
        f"world (seed {summary['seed']}) → {args.out}: {summary['passages']} passages, "
        f"{q['train']} train / {q['test']} test / {q['demo']} demo questions; "
        f"demo searches retrieving their fact at rank 1: {summary['demos']['gold_at_rank1']:.1%}"
    )
    return 0
