"""Writes the demo export (`python -m doppel.demo.make_demo`): invented people, invented lines.

Three friends share allotment plot 14. Mara Quist, who exported the chats, organises with
capitals and exclamation marks; Jonah Pell writes in lowercase bursts full of "lol"; Beatrice
Ashdown writes long, formal, punctuated sentences. Each voice has its own phrase bank per
topic, filled with slot words; a seeded generator lays eight weeks of chats over them, as
WhatsApp for Android writes them: the group chat and Mara's two 1:1 chats. The same seed
writes the same files, byte for byte.
"""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from pathlib import Path

MARA, JONAH, BEA = "Mara Quist", "Jonah Pell", "Beatrice Ashdown"
GROUP = "Plot 14"
START, WEEKS = date(2024, 4, 1), 8
SEED = 14

SLOTS = {
    "veg": ["tomatoes", "courgettes", "runner beans", "broad beans", "potatoes", "beetroot", "lettuces",
            "strawberries", "garlic", "leeks", "radishes", "peas", "chard", "squash"],
    "job": ["weeding", "watering", "turning the compost", "netting the brassicas", "mending the fence",
            "tying in the beans", "edging the paths", "clearing the nettles"],
    "day": ["Saturday", "Sunday", "tomorrow", "Thursday", "Friday evening", "Wednesday after work"],
    "time": ["8", "9", "half 9", "10", "11", "2", "4", "6"],
    "pest": ["slugs", "aphids", "pigeons", "snails", "the fox", "cabbage whites", "ants"],
    "thing": ["the hose", "the good trowel", "the wheelbarrow", "the shed key", "the padlock",
              "the seed trays", "the kneeling pad", "the loppers"],
    "food": ["a frittata", "courgette soup", "a tart", "a bean salad", "chutney", "a crumble", "pesto"],
    "n": ["two", "three", "four", "six", "a dozen"],
}

# topic -> speaker -> lines; {slot} is filled from SLOTS, "|" splits a burst of messages
BANK: dict[str, dict[str, list[str]]] = {
    "watering": {
        MARA: [
            "Who's on watering {day}?? It's meant to be scorching!",
            "I can do the watering {day} morning, before work!",
            "Please don't forget the {veg}, they were SO dry yesterday 😩",
            "Water butt is nearly empty again!! We need a plan.",
            "Rota time! I'll take {day}, who wants the rest?",
        ],
        JONAH: [
            "i can do {day} lol",
            "forgot the watering can at home again lol|used a bucket",
            "watered everything|even the weeds lol",
            "is it supposed to rain or is that a lie",
            "my arms are dead from carrying {thing} lol",
            "done. {veg} looked thirsty tbh",
        ],
        BEA: [
            "I am happy to take the watering on {day}; I shall go early, before it gets too warm.",
            "May I suggest we water in the evening? Less is lost to evaporation, and the {veg} will thank us.",
            "I have watered the {veg} and the seedlings in the cold frame. The water butt is, I am afraid, almost "
            "empty.",
            "For the record, I do not think a bucket counts as a watering can, Jonah.",
            "I checked the forecast: no rain until {day}, so we should keep to the rota.",
        ],
    },
    "pests": {
        MARA: [
            "Something has eaten half the {veg}!! I'm devastated 😭",
            "It's the {pest} again, I just know it.",
            "Beer traps?? Copper tape?? I'll try anything at this point!",
            "Okay who left the net open?! 😤",
            "Victory!! No damage this week 🎉",
        ],
        JONAH: [
            "{pest} absolutely feasting lol",
            "caught one red handed|it looked me in the eye lol",
            "ngl i kind of respect them",
            "we could just grow more and share lol",
            "i'll bring more netting {day}",
        ],
        BEA: [
            "I found the culprits under the boards this morning: {pest}, in considerable numbers.",
            "I would rather we avoided pellets; they are unkind to the hedgehogs, and there is at least one on the "
            "site.",
            "Copper tape worked rather well for my mother, though it is not cheap.\nI can order some if we agree to "
            "share the cost.",
            "The netting had come loose at the north corner. I have pegged it down again, more firmly this time.",
            "I propose a nightly inspection with a torch. I am quite serious.",
        ],
    },
    "sowing": {
        MARA: [
            "Seed order arrived!!! {veg}, {veg} and a mystery packet 🌱",
            "Shall we sow the {veg} this weekend?",
            "I've drawn a plan of the beds, sending it now!",
            "The {veg} seedlings are UP!! Tiny and perfect!",
            "Who wants to help me pot on {day}?",
        ],
        JONAH: [
            "what even is a mystery packet lol",
            "i sowed some {veg} but forgot to label them lol|good luck future us",
            "are the seed trays meant to be this soggy",
            "lol the plan has a little drawing of me",
            "i'm in for {day} if there's cake",
        ],
        BEA: [
            "I have labelled every row, with the date of sowing and the variety, in pencil so that it does not run.",
            "According to the packet, the {veg} should go in after the last frost, which may not yet have passed.",
            "I took the liberty of thinning the {veg}; they were far too crowded to do well.",
            "Might I ask that we keep the sowing notebook in the shed, so that everyone can see what was done "
            "and when?",
            "The plan is excellent, Mara, though I would move the {veg} to where they get the afternoon sun.",
        ],
    },
    "harvest": {
        MARA: [
            "FIRST {veg} OF THE YEAR!!! 🍅🎉",
            "We have so many {veg}, take some home please!!",
            "I'm making {food} with ours tonight!",
            "Photo incoming, look at the size of this!!",
            "Harvest supper {day}? Bring a dish!",
        ],
        JONAH: [
            "ate one straight off the plant lol|no regrets",
            "we have too many {veg} and i'm not complaining",
            "i'll bring {food}|or crisps. probably crisps lol",
            "that's a big boy",
            "how do you even cook chard lol",
        ],
        BEA: [
            "I picked {n} pounds of {veg} this morning and left them in the shed, in the blue crate.",
            "I should be delighted to make {food} for the supper; it was my grandmother's recipe.",
            "Chard, Jonah, is best wilted with a little garlic and lemon. I will write it down for you.",
            "It seems to me that we ought to stagger the sowing next year, so that we are not overwhelmed all at once.",
            "The {veg} are quite the best we have grown. I believe the compost has made the difference.",
        ],
    },
    "shed": {
        MARA: [
            "Has anyone seen {thing}?? It's not in the shed!",
            "The shed door is sticking again, it took me ages!",
            "I'm going to paint the shed {day}, who's in? 🎨",
            "Tidied the shed!! You can see the floor now!",
        ],
        JONAH: [
            "i might have {thing} lol|in my car|sorry",
            "the shed spider is still there btw|his name is gerald",
            "i'll bring a drill {day}",
            "you can see the floor?? lol wild",
        ],
        BEA: [
            "I have put {thing} back on its hook, where it belongs, and I would be grateful if it stayed there.",
            "The hinge on the shed door has rusted through. I shall buy a replacement on {day}.",
            "I am glad to help with the painting, provided we choose a colour the committee will approve.",
            "Please could everyone return the tools clean? The trowel was caked in clay.",
        ],
    },
    "weather": {
        MARA: [
            "Frost warning tonight!! Cover the {veg}!!",
            "It's SO nice out, I'm going down after work ☀️",
            "Hail?!? In May?!?",
            "Rain all weekend 😩 so much for my plans",
        ],
        JONAH: [
            "it's raining sideways lol",
            "sun's out|shed roof is out|everyone's out lol",
            "i'm soaked lol",
            "frost in may is disrespectful",
        ],
        BEA: [
            "I have put fleece over the {veg} and weighted it with bricks; it should hold unless the wind gets up.",
            "The forecast is, for once, encouraging: dry and mild until {day}.",
            "I was caught in the shower on the way home, and I must say I look rather like a drowned cat.",
        ],
    },
    "quiz": {
        MARA: [
            "Pub quiz {day}!! Are we going?? 🧠",
            "We came SO close last time, we have to go back!",
            "Team name ideas please!!",
            "Third place!!! Proud of us!!",
        ],
        JONAH: [
            "lettuce be winners lol",
            "i only know about football and sharks",
            "i'll be there at {time} lol|ish",
            "we got robbed on the music round tbh",
            "the rake pretenders lol",
        ],
        BEA: [
            "I shall come, though I must warn you that my knowledge of popular music ends around 1987.",
            "I maintain that the answer to question seven was Canberra, and I am prepared to write to the quizmaster.",
            "A respectable result, and a most enjoyable evening. Thank you both.",
        ],
    },
    "committee": {
        MARA: [
            "We got a letter from the allotment committee 😬",
            "Plot inspection {day}!! We need to tidy up!!",
            "Bea, could you reply to them? You're so good at that",
        ],
        JONAH: [
            "uh oh lol what did we do",
            "is this about the nettles|it's about the nettles isn't it",
            "i'll strim {day} lol",
        ],
        BEA: [
            "I have read the letter. It is about the nettles along the path, and, to be fair to them, they have a "
            "point.",
            "I have drafted a reply to the committee, which I shall send unless either of you objects:\nwe will clear "
            "the path by {day}, and keep it clear through the summer.",
            "The inspection went well. The secretary was particularly impressed by the {veg}.",
        ],
    },
    "life": {
        MARA: [
            "Long day at work, I need to dig something 😅",
            "How are you?? We haven't talked properly in ages!",
            "Coffee {day}? My treat!",
            "Guess who finally booked a holiday!! ✈️",
            "Thank you for today, honestly, it really helped ❤️",
            "Are you free {day}? I need to vent lol",
        ],
        JONAH: [
            "not bad lol|tired|the usual",
            "new job is kind of fine actually",
            "my cat knocked {thing} off the table lol",
            "coffee sounds good|i'll be late lol",
            "haha yeah",
            "lol same",
            "omg no way",
            "wait what",
        ],
        BEA: [
            "I am well, thank you for asking. Work has been demanding, but I have been reading in the evenings, which "
            "helps.",
            "I should like that very much. Shall we say {time} o'clock, at the café by the station?",
            "I am sorry to hear it. If it would help to talk, I am free {day}.",
            "I have finished the novel you lent me; I confess I cried at the end, which I did not expect.",
        ],
    },
}
GROUP_TOPICS = ["watering", "pests", "sowing", "harvest", "shed", "weather", "quiz", "committee"]
DM_TOPICS = ["life", "life", "quiz", "harvest", "shed", "watering"]
MEDIA = {JONAH: 0.06, MARA: 0.03, BEA: 0.0}  # chances that a message is a photo, which the export omits


def _fill(rng: random.Random, line: str) -> str:
    return line.format(**{k: rng.choice(v) for k, v in SLOTS.items()})


def _chat(rng: random.Random, at: datetime, speakers: list[str], topics: list[str]) -> list[tuple[datetime, str, str]]:
    """One conversation from `at`: a topic, 5-16 messages, no speaker three times running."""
    topic = rng.choice(topics)
    # each voice says its lines in the bank's order (a small arc), from a random one on
    left = {s: (lambda b, k: b[k:] + b[:k])(BANK[topic][s], rng.randrange(len(BANK[topic][s]))) for s in speakers}
    out: list[tuple[datetime, str, str]] = []
    previous: list[str] = []
    for _ in range(rng.randint(5, 16)):
        choices = [s for s in speakers if previous[-2:] != [s, s]]
        speaker = rng.choice(choices)
        bank = left[speaker] or BANK["life"][speaker]
        line = bank.pop(0) if left[speaker] else rng.choice(bank)
        for part in _fill(rng, line).split("|"):
            at += timedelta(seconds=rng.randint(5, 40) if speaker == JONAH else rng.randint(30, 600))
            if rng.random() < MEDIA[speaker]:
                out.append((at, speaker, "<Media omitted>"))
            out.append((at, speaker, part))
        previous.append(speaker)
    return out


def _days(rng: random.Random, speakers: list[str], topics: list[str], chance: float) -> list[tuple[datetime, str, str]]:
    """A chat on about `chance` of the days, sometimes a second one in the evening."""
    out = []
    for day in (START + timedelta(days=i) for i in range(WEEKS * 7)):
        if rng.random() >= chance:
            continue
        midnight = datetime.combine(day, datetime.min.time())
        out += _chat(rng, midnight + timedelta(minutes=rng.randint(7 * 60, 12 * 60)), speakers, topics)
        if rng.random() < chance / 3:
            out += _chat(rng, midnight + timedelta(minutes=rng.randint(17 * 60, 21 * 60)), speakers, topics)
    return out


def _lines(messages: list[tuple[datetime, str, str]]) -> str:
    return "".join(f"{at:%d/%m/%Y, %H:%M} - {who}: {text}\n" for at, who, text in messages)


def build() -> dict[str, str]:
    """The export's files: name -> text."""
    rng = random.Random(SEED)
    opening = f"{START:%d/%m/%Y}, 08:58 - Messages and calls are end-to-end encrypted. Tap to learn more.\n"
    created = f"{START:%d/%m/%Y}, 08:59 - {MARA} created group \"{GROUP}\"\n"
    group = _days(rng, [MARA, JONAH, BEA], GROUP_TOPICS, 0.8)
    files = {f"WhatsApp Chat with {GROUP}.txt": opening + created + _lines(group)}
    for friend in (JONAH, BEA):
        files[f"WhatsApp Chat with {friend}.txt"] = opening + _lines(_days(rng, [MARA, friend], DM_TOPICS, 0.3))
    return files


def main() -> None:
    folder = Path(__file__).with_name("export")
    folder.mkdir(exist_ok=True)
    for name, text in build().items():
        (folder / name).write_text(text, encoding="utf-8", newline="\n")
        print(f"{folder / name}: {text.count(chr(10))} lines")


if __name__ == "__main__":
    main()
