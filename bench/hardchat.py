"""A harder synthetic chat for the fidelity bench: four voices, large vocabularies, replies on topic.

The demo chats (`doppel/demo`) draw every line from a small phrase bank per voice, so a tuned
model can score well by replaying lines it has seen. This chat is made so that cannot work:

* **Four people, four styles.** Ines writes short lowercase messages in bursts, full of emoji
  and trailing dots; Tomasz writes long, punctuated paragraphs, often over several lines (now
  and then a bulleted list), never an emoji; Priya writes excited sentences with CAPS, `!!` and
  `?!`, a few emoji; Otis answers in a few lowercase words with no punctuation.
* **Large vocabularies.** Ten topics (cooking, football, work, ...) hold about 44 words each,
  no word in two topics; each person prefers their own ~60% of each topic's words (Zipf-weighted,
  in an order of their own) and has some hundred words and clause shapes of their own (fillers,
  intensifiers, ways to say yes and no), so a person uses hundreds of words and the same message
  seldom comes twice.
* **Replies depend on what they answer.** A message that answers someone else's keeps that
  message's topic (85%), often picks up one of its nouns, and answers a question as an answer
  (yes/no forms of its own) and a statement as a reaction; a new session starts on a topic the
  starter likes. `topic_of` recovers a message's topic from its words, so the dependence can be
  checked (`properties`).
* **Multi-line messages and emoji**, in each person's measure.

Deterministic per seed: `conversations(8000, seed=0)` is the same chat every time. It is a
group chat of all four (about 60% of the messages) and three one-to-one chats, in sessions
separated by pauses longer than the trainer's session gap (6 h), as `doppel.conversation`
holds them (what a parser would have produced).

    python bench/hardchat.py            # a sample of the chat and its properties
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

INES, TOMASZ, PRIYA, OTIS = "Ines Ferro", "Tomasz Wilk", "Priya Nair", "Otis Brandt"
PEOPLE = [INES, TOMASZ, PRIYA, OTIS]
GROUP_TITLE = "the lot of us"

# topic -> (nouns, verbs, adjectives), space-separated; every word belongs to one topic only (checked at import)
_TOPIC_WORDS: dict[str, tuple[str, str, str]] = {
    "cooking": (
        "risotto lasagne dumplings curry sourdough garlic saffron skillet oven recipe broth noodles pesto chilli "
        "lentils aubergine butter dough spatula marinade crumble pastry coriander leftovers",
        "bake simmer chop roast season fry taste knead marinate stir",
        "crispy spicy burnt creamy salty tender soggy fragrant gooey smoky",
    ),
    "football": (
        "match keeper striker penalty referee derby league fixture stadium midfield corner header transfer "
        "gaffer kit goal pitch subs halftime scarf winger tactics crossbar var",
        "score defend tackle chant win lose draw shoot dribble celebrate",
        "offside clinical sloppy lucky tense brutal deserved dodgy electric gutted",
    ),
    "work": (
        "deadline spreadsheet manager meeting standup invoice client report slides budget promotion intern inbox "
        "calendar contract appraisal payroll printer laptop office project agenda overtime colleague",
        "email schedule submit present approve reschedule finish delegate forward",
        "urgent pointless overdue busy corporate tedious productive hectic awkward quarterly",
    ),
    "travel": (
        "flight passport hostel luggage airport itinerary ferry visa suitcase backpack beach museum boarding "
        "layover terminal taxi hotel souvenir island coast sunburn currency postcard jetlag",
        "pack book land explore wander fly depart sightsee translate",
        "delayed cheap gorgeous exhausting sunny crowded remote scenic overbooked tropical",
    ),
    "music": (
        "gig album setlist guitar drummer chorus playlist vinyl festival headliner venue encore lyrics bassline "
        "synth tour speakers headphones mixtape band singer soundcheck moshpit remix",
        "listen sing dance stream rehearse record shout tune strum hum",
        "loud catchy underrated acoustic deafening mellow iconic banging soulful tuneless",
    ),
    "housing": (
        "landlord rent deposit boiler radiator flatmate lease mould kitchen sofa viewing bedroom hallway fridge "
        "mortgage plumber keys neighbour bins carpet balcony ceiling damp wardrobe",
        "move paint fix clean assemble hoover complain repair measure redecorate",
        "cramped draughty spacious leaky overpriced cosy noisy mouldy furnished chilly",
    ),
    "gaming": (
        "console controller boss level quest loot patch server lobby headset speedrun dungeon respawn checkpoint "
        "inventory multiplayer leaderboard character sword raid glitch savefile minimap dlc",
        "grind unlock craft rage carry download beat heal",
        "laggy broken overpowered nerfed addictive glitchy grindy cheesy sweaty epic",
    ),
    "hiking": (
        "trail summit boots tent ridge waterfall campsite compass blister thermos rucksack valley forest lake "
        "sunrise midges bridge stile cairn fog drizzle footpath bothy picnic",
        "hike climb camp scramble swim navigate trek descend paddle forage",
        "muddy steep breathtaking windy freezing misty rocky peaceful exposed soaked",
    ),
    "pets": (
        "puppy kitten vet leash treats hamster collar litter parrot groomer tortoise fleas kennel fishtank "
        "biscuits harness rabbit cage walkies paw whiskers tail basket catflap",
        "adopt walk feed groom cuddle chase bark purr scratch fetch",
        "fluffy naughty sleepy clingy greedy scruffy adorable anxious mischievous cuddly",
    ),
    "gym": (
        "gym treadmill deadlift protein physio hamstring yoga marathon trainers dumbbells spin stretches squats "
        "smoothie injury warmup rowing bench plank knee shoulder cardio locker kettlebell",
        "run lift stretch recover sweat cycle jog skip row squat",
        "sore shattered pumped stiff knackered disciplined aching fit lazy toned",
    ),
}
TOPICS: dict[str, tuple[list[str], list[str], list[str]]] = {
    name: (nouns.split(), verbs.split(), adjectives.split()) for name, (nouns, verbs, adjectives) in _TOPIC_WORDS.items()
}
DAYS = ["today", "tonight", "tomorrow", "on friday", "on saturday", "on sunday", "next week", "on monday", "later"]


@dataclass(frozen=True)
class Voice:
    """One person's way of writing: their clauses, words and habits (see `_render`)."""

    name: str
    clauses: list[str]  # with {n} {n2} {v} {a} {x} {day}; a trailing "?" makes it a question
    echoes: list[str]  # clauses that pick up {echo}, a noun of the message answered
    yes: list[str]
    no: list[str]
    react: list[str]  # to a statement
    fillers: list[str]  # said before a clause now and then
    intensifiers: list[str]
    emoji: list[str]
    emoji_rate: float  # chance a message carries emoji
    lines_rate: float  # chance a message runs over several lines
    clauses_per_message: tuple[int, int]  # (fewest, most) clauses of their own in a message
    burst: list[float]  # chances of 1, 2, 3 messages in a row
    likes: list[str]  # topics they start sessions on, most liked first
    activity: float  # share of the group's turns


VOICES: dict[str, Voice] = {
    INES: Voice(
        INES,
        clauses=[
            "the {n} is {x} {a}", "i literally need to {v} the {n}", "lowkey obsessed with the {n}",
            "ngl the {n} was {a}", "no bc the {n}", "the way the {n} was {x} {a}", "i can't with the {n}",
            "{n} vibes only", "who wants to {v} the {n} with me?", "me and the {n} rn", "is the {n} {a} or is it just me?",
            "screaming at the {n}", "we need to {v} the {n} asap", "the {n} and the {n2} tho", "bestie the {n}",
            "ok but the {n}", "i'm dead the {n} is {a}", "can we {v} the {n} {day}?", "it's giving {a} {n}",
            "why is the {n} so {a}?", "not the {n} being {a} again", "the {n} ate fr", "i miss the {n} sm",
            "pls tell me you saw the {n}?", "manifesting a {a} {n}", "the {n2} >>> the {n}",
        ],
        echoes=["wait the {echo}??", "the {echo} is everything", "omg the {echo}", "not the {echo} again",
                "ok the {echo} tho", "the {echo} lives in my head"],
        yes=["yesss", "yes obviously", "ofc", "duh", "yes bestie", "100%"],
        no=["noo", "nope", "absolutely not", "nahh", "not yet"],
        react=["omg", "stoppp", "no way", "i'm crying", "love that", "ugh", "iconic", "so real", "literally same"],
        fillers=["ngl", "honestly", "lowkey", "ok so", "bestie", "no but", "wait"],
        intensifiers=["so", "literally so", "lowkey", "kinda", "sooo", "actually"],
        emoji=["😂", "🙈", "✨", "💀", "🥲", "😭", "🫶", "💅"],
        emoji_rate=0.55,
        lines_rate=0.12,
        clauses_per_message=(1, 2),
        burst=[0.5, 0.35, 0.15],
        likes=["music", "pets", "cooking", "travel"],
        activity=0.28,
    ),
    TOMASZ: Voice(
        TOMASZ,
        clauses=[
            "I think we ought to {v} the {n} before {day}", "Frankly, the {n} was rather {a}",
            "To be fair, the {n} has been {a} for weeks", "Has anyone managed to {v} the {n} yet?",
            "I would suggest we {v} the {n} first, and then the {n2}",
            "Admittedly the {n} is not ideal, but it is {a} enough",
            "In any case, the {n} needs attention", "I spoke to someone about the {n}; apparently it is quite {a}",
            "Presumably the {n} will be {a} again", "The {n} was splendid, although the {n2} was a bit {a}",
            "Could we possibly {v} the {n} {day}?", "I shall {v} the {n} {day}",
            "Nevertheless, I remain convinced the {n} is {a}", "For what it is worth, I found the {n} quite {a}",
            "We should agree on the {n} before anyone has to {v} anything",
            "My view is that the {n} matters more than the {n2}", "I did warn you that the {n} would be {a}",
            "It occurs to me that nobody has mentioned the {n}", "Would it be terribly {a} to {v} the {n}?",
            "On reflection, the {n} deserves a second look", "Incidentally, the {n2} was more {a} than expected",
            "I have been meaning to {v} the {n}, but work got in the way",
        ],
        echoes=["Regarding the {echo}: I am not convinced", "The {echo} is a fair point", "As for the {echo}, leave it to me",
                "I had forgotten about the {echo}", "The {echo} again? Remarkable"],
        yes=["Yes, I believe so", "Yes, certainly", "Indeed, yes", "I should think so", "Yes, as of this morning"],
        no=["No, not yet", "I am afraid not", "No, and I doubt it", "Not as far as I know"],
        react=["Indeed", "That is fair", "I agree entirely", "Quite right", "Good grief", "How very odd", "Splendid"],
        fillers=["Well,", "Right,", "Incidentally,", "Then again,", "Mind you,", "Furthermore,"],
        intensifiers=["rather", "quite", "remarkably", "somewhat", "thoroughly"],
        emoji=[],
        emoji_rate=0.0,
        lines_rate=0.4,
        clauses_per_message=(1, 4),
        burst=[0.9, 0.1, 0.0],
        likes=["work", "hiking", "housing", "football"],
        activity=0.2,
    ),
    PRIYA: Voice(
        PRIYA,
        clauses=[
            "omg the {n} was {x} {a}", "wait did you {v} the {n}?", "I NEED to {v} the {n}", "the {n} is {x} {a}",
            "guys the {n}", "cannot believe the {n}", "tell me everything about the {n}", "who's coming to {v} the {n}?",
            "the {n} was insane", "let's {v} the {n} {day}", "stop it, the {n}", "okay the {n} is super {a}",
            "so hyped for the {n}", "can we please {v} the {n}?", "best {n} ever", "no way the {n} is {a}",
            "are we still doing the {n} {day}?", "the {n} and the {n2} in one day", "I'm obsessed, the {n}",
            "who had the {a} {n}?", "this {n} is everything", "vote now: {n} or {n2}?",
        ],
        echoes=["wait the {echo}?!", "THE {echo}", "omg I forgot the {echo}", "is the {echo} still happening?",
                "the {echo} was so good"],
        yes=["YES", "yes!!", "obviously!!", "yesss let's go", "of course!!"],
        no=["noooo", "no!!", "not yet!!", "nope, sadly"],
        react=["wait what", "no way", "love this", "hahaha", "amazing", "so good", "I'm screaming", "stop"],
        fillers=["okay", "guys", "wait", "sooo", "honestly", "omg"],
        intensifiers=["SO", "super", "totally", "insanely", "sooo"],
        emoji=["👀", "🔥", "🙌", "🎉", "😍", "🤩"],
        emoji_rate=0.35,
        lines_rate=0.12,
        clauses_per_message=(1, 3),
        burst=[0.6, 0.3, 0.1],
        likes=["travel", "gym", "music", "cooking"],
        activity=0.28,
    ),
    OTIS: Voice(
        OTIS,
        clauses=[
            "{n} {a}", "{v} {n} {day}", "cba to {v}", "{n} was {a} tbh", "defo {v} the {n}", "idk about the {n}",
            "{n} rn", "need to {v}", "the {n} again", "{a} {n} m8", "nah {n} {a}", "gonna {v} the {n}",
            "{n} or {n2}?", "who has the {n}?", "{n} sorted", "cant {v} {day}", "{n} {x} {a}", "{a} {n} {day}",
            "got the {n} {day}", "{n} was {x} {a} lol", "u seen the {n}?", "{v} the {n} then", "{n} n {n2}",
        ],
        echoes=["{echo}?", "{echo} sorted", "forgot the {echo}", "{echo} lol"],
        yes=["ya", "yep", "defo", "ye", "sound"],
        no=["nah", "nope", "no", "not rn"],
        react=["lol", "fair", "k", "nice", "rip", "mad", "ha", "cheers", "oof"],
        fillers=["tbh", "ngl", "mate", "so"],
        intensifiers=["well", "proper", "dead", "v"],
        emoji=["👍", "🤷"],
        emoji_rate=0.1,
        lines_rate=0.02,
        clauses_per_message=(1, 1),
        burst=[0.8, 0.2, 0.0],
        likes=["gaming", "football", "gym", "housing"],
        activity=0.24,
    ),
}
CHATS: list[tuple[str, list[str], float]] = [  # title, people, share of the messages
    (GROUP_TITLE, PEOPLE, 0.6),
    (f"{INES} and {PRIYA}", [INES, PRIYA], 0.16),
    (f"{TOMASZ} and {OTIS}", [TOMASZ, OTIS], 0.12),
    (f"{INES} and {TOMASZ}", [INES, TOMASZ], 0.12),
]
SAME_TOPIC = 0.85  # chance an answer keeps the topic of the message it answers
ECHO = 0.3  # chance an answer picks up a noun of the message it answers
_WORD = re.compile(r"[a-z]+")


def _check_topics() -> dict[str, str]:
    owner: dict[str, str] = {}
    for topic, parts in TOPICS.items():
        for w in (w for ws in parts for w in ws):
            if w in owner:
                raise AssertionError(f"{w!r} is in topics {owner[w]!r} and {topic!r}")
            owner[w] = topic
    return owner


TOPIC_OF_WORD = _check_topics()


def topic_of(text: str) -> str | None:
    """The topic whose words `text` uses most (None when it uses none, or two alike)."""
    counts = Counter(t for w in _WORD.findall(text.lower()) if (t := TOPIC_OF_WORD.get(w)))
    if not counts:
        return None
    (first, n), *rest = counts.most_common(2)
    return None if rest and rest[0][1] == n else first


class _Lexicon:
    """One person's words of each topic: their own ~60%, in their own Zipf order."""

    def __init__(self, rng: random.Random):
        self.words: dict[tuple[str, int], tuple[list[str], list[float]]] = {}
        for topic, parts in TOPICS.items():
            for k, ws in enumerate(parts):
                mine = rng.sample(ws, max(3, math.ceil(0.6 * len(ws))))
                self.words[topic, k] = mine, [1 / (r + 1) ** 0.9 for r in range(len(mine))]

    def pick(self, rng: random.Random, topic: str, part: int) -> str:
        if rng.random() < 0.12:  # now and then a word of the topic they do not favour
            return rng.choice(TOPICS[topic][part])
        words, weights = self.words[topic, part]
        return rng.choices(words, weights)[0]


@dataclass
class _Said:
    speaker: str
    text: str
    topic: str
    question: bool
    nouns: list[str]


def _fill(rng: random.Random, voice: Voice, lex: _Lexicon, clause: str, topic: str, echo: str | None,
          nouns: list[str]) -> str:
    def noun() -> str:
        n = lex.pick(rng, topic, 0)
        nouns.append(n)
        return n

    values = {
        "n": noun(), "n2": noun(), "v": lex.pick(rng, topic, 1), "a": lex.pick(rng, topic, 2),
        "x": rng.choice(voice.intensifiers), "day": rng.choice(DAYS), "echo": echo or "",
    }
    if "{n2}" in clause and values["n2"] == values["n"]:
        values["n2"] = noun()
    return clause.format(**values)


def _clauses(rng: random.Random, voice: Voice, lex: _Lexicon, topic: str, answering: _Said | None,
             first: bool) -> tuple[list[str], bool, list[str]]:
    """(clauses, is a question, nouns used) of one message."""
    nouns: list[str] = []
    out: list[str] = []
    if first and answering is not None:  # answer the message, then say something of one's own
        if answering.question:
            out.append(rng.choice(voice.yes if rng.random() < 0.6 else voice.no))
        elif rng.random() < 0.45:
            out.append(rng.choice(voice.react))
        if answering.nouns and answering.topic == topic and rng.random() < ECHO:
            out.append(_fill(rng, voice, lex, rng.choice(voice.echoes), topic, rng.choice(answering.nouns), nouns))
    own = rng.randint(*voice.clauses_per_message)
    if out and rng.random() < 0.35:
        own -= 1  # the answer stands in for a clause (a lone "ya", "YES", "Indeed")
    for _ in range(own):
        clause = _fill(rng, voice, lex, rng.choice(voice.clauses), topic, None, nouns)
        if voice.fillers and rng.random() < 0.15:
            clause = f"{rng.choice(voice.fillers)} {clause[0].lower() + clause[1:] if voice is VOICES[TOMASZ] else clause}"
        out.append(clause)
    if not out:
        out.append(_fill(rng, voice, lex, rng.choice(voice.clauses), topic, None, nouns))
    return out, out[-1].endswith("?"), nouns


def _sentence(text: str, end: str) -> str:
    text = text.strip()
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".?!:" else text + end


def _render(rng: random.Random, voice: Voice, clauses: list[str]) -> str:
    """The clauses written as this person writes: case, punctuation, lines, emoji."""
    name = voice.name
    if name == INES:
        parts = [c.lower().rstrip(".") for c in clauses]
        text = "\n".join(parts) if len(parts) > 1 and rng.random() < voice.lines_rate * 1.5 else " ".join(parts)
        if rng.random() < 0.15:
            text += "..."
        if rng.random() < voice.emoji_rate:
            em = "".join(rng.choices(voice.emoji, k=rng.randint(1, 3)))
            text += ("\n" + em) if rng.random() < voice.lines_rate else (" " + em)
        return text
    if name == TOMASZ:
        sentences = [_sentence(c, ".") for c in clauses]
        if rng.random() < voice.lines_rate:
            if len(sentences) >= 3 and rng.random() < 0.35:  # a list
                head = rng.choice(["A few points:", "My thoughts, for what they are worth:", "To summarise:"])
                return head + "\n" + "\n".join("- " + s[0].lower() + s[1:].rstrip(".") for s in sentences)
            cut = rng.randint(1, len(sentences) - 1) if len(sentences) > 1 else 1
            return " ".join(sentences[:cut]) + "\n" + " ".join(sentences[cut:]) if len(sentences) > 1 else sentences[0]
        return " ".join(sentences)
    if name == PRIYA:
        out = []
        for c in clauses:
            words = c.split()
            if len(words) > 2 and rng.random() < 0.25:
                k = rng.randrange(len(words))
                words[k] = words[k].upper()
            c = " ".join(words)
            c = (c[0].upper() + c[1:]) if rng.random() < 0.7 else c
            if c.endswith("?"):
                c = c[:-1] + rng.choice(["?", "?!", "??"])
            else:
                c += rng.choice(["!!", "!", "!!!", ""])
            out.append(c)
        text = "\n".join(out) if len(out) > 1 and rng.random() < voice.lines_rate * 2 else " ".join(out)
        if rng.random() < voice.emoji_rate:
            text += " " + "".join(rng.choices(voice.emoji, k=rng.randint(1, 2)))
        return text
    # Otis: lowercase, no punctuation but a question mark, a thumb now and then
    text = " ".join(c.lower().rstrip(".!") for c in clauses)
    if rng.random() < voice.lines_rate:
        text += "\n" + rng.choice(voice.react)
    if rng.random() < voice.emoji_rate:
        text = rng.choice(voice.emoji) if rng.random() < 0.3 else text + " " + rng.choice(voice.emoji)
    return text


def _session(rng: random.Random, people: list[str], lexicons: dict[str, _Lexicon], size: int) -> list[_Said]:
    """One session of about `size` messages: someone opens on a topic they like; the others answer."""
    weights = [VOICES[p].activity for p in people]
    speaker = rng.choices(people, weights)[0]
    topic = rng.choice(VOICES[speaker].likes if rng.random() < 0.7 else list(TOPICS))
    out: list[_Said] = []
    last_other: _Said | None = None
    while len(out) < size:
        voice = VOICES[speaker]
        answering = last_other if last_other is not None and last_other.speaker != speaker else None
        if answering is not None:
            topic = answering.topic if rng.random() < SAME_TOPIC else rng.choice(
                voice.likes if rng.random() < 0.5 else list(TOPICS))
        burst = rng.choices([1, 2, 3], voice.burst)[0]
        for k in range(burst):
            clauses, question, nouns = _clauses(rng, voice, lexicons[speaker], topic, answering, first=k == 0)
            said = _Said(speaker, _render(rng, voice, clauses), topic, question, nouns)
            out.append(said)
        last_other = out[-1]
        others = [p for p in people if p != speaker]
        speaker = rng.choices(others, [VOICES[p].activity for p in others])[0]
    return out


def conversations(messages: int = 8000, seed: int = 0) -> list[Any]:
    """About `messages` messages (a session may overshoot by a burst), as `doppel.conversation.Conversation`s."""
    from doppel.conversation import Conversation, Message

    rng = random.Random(seed)
    lexicons = {p: _Lexicon(random.Random(f"{seed}-{p}")) for p in PEOPLE}
    out = []
    for c, (title, people, share) in enumerate(CHATS):
        target = max(2, round(messages * share))
        t = datetime(2024, 1, 1, 8, tzinfo=UTC) + timedelta(hours=c)
        msgs: list[Message] = []
        while len(msgs) < target:
            t += timedelta(hours=rng.uniform(8, 40))  # longer than the 6 h session gap
            for said in _session(rng, people, lexicons, min(rng.randint(6, 30), target - len(msgs) + 2)):
                pause = rng.expovariate(1 / 25) if said.speaker in (INES, PRIYA) else rng.expovariate(1 / 120)
                t += timedelta(seconds=5 + pause)
                msgs.append(Message(said.speaker, said.text, t))
        out.append(Conversation(f"hard-{c}", title, "jsonl", msgs, participants=list(people)))
    return out


# --- what the chat is like ------------------------------------------------------------------

EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF]")


def properties(convs: Sequence[Any]) -> dict[str, Any]:
    """What the chat claims to be, measured: per person their messages, distinct words, mean words
    per message, shares multi-line, with emoji and exactly repeated (a message written before by
    them); and topic dependence: of the replies to someone else's message where both have a
    topic, the share on the answered message's topic, against the same share with replies
    paired to a message of another session (chance)."""
    per: dict[str, dict[str, Any]] = {}
    seen: dict[str, set[str]] = {}
    vocab: dict[str, set[str]] = {}
    pairs: list[tuple[str, str]] = []  # (topic answered, topic of the reply)
    for conv in convs:
        prev = None
        for m in conv.messages:
            p = per.setdefault(m.sender, {"messages": 0, "words": 0, "multi_line": 0, "emoji": 0, "repeated": 0})
            words = _WORD.findall(m.text.lower())
            p["messages"] += 1
            p["words"] += len(words)
            p["multi_line"] += "\n" in m.text
            p["emoji"] += EMOJI.search(m.text) is not None
            key = " ".join(m.text.split()).casefold()
            p["repeated"] += key in seen.setdefault(m.sender, set())
            seen[m.sender].add(key)
            vocab.setdefault(m.sender, set()).update(words)
            if prev is not None and prev.sender != m.sender and m.timestamp - prev.timestamp < timedelta(hours=6):
                a, b = topic_of(prev.text), topic_of(m.text)
                if a and b:
                    pairs.append((a, b))
            prev = m
    people = {
        name: {
            "messages": p["messages"],
            "vocabulary": len(vocab[name]),
            "mean_words": round(p["words"] / p["messages"], 2),
            "multi_line": round(p["multi_line"] / p["messages"], 4),
            "emoji": round(p["emoji"] / p["messages"], 4),
            "repeated": round(p["repeated"] / p["messages"], 4),
        }
        for name, p in per.items()
    }
    same = sum(a == b for a, b in pairs) / len(pairs) if pairs else 0.0
    shuffled = [b for _, b in pairs]
    random.Random(0).shuffle(shuffled)
    chance = sum(a == b for (a, _), b in zip(pairs, shuffled, strict=True)) / len(pairs) if pairs else 0.0
    return {"messages": sum(p["messages"] for p in per.values()), "people": people,
            "reply_pairs": len(pairs), "reply_same_topic": round(same, 4), "reply_same_topic_chance": round(chance, 4)}


def main() -> None:
    import json

    convs = conversations()
    for m in convs[0].messages[:24]:
        print(f"{m.sender}: {m.text}")
    print(json.dumps(properties(convs), indent=1, ensure_ascii=False))


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
