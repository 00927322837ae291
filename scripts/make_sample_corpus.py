#!/usr/bin/env python3
"""Generate the bundled, project-written sample corpus under ``data/sample/``.

The corpus imitates the *shapes* of real Civitai ``/api/v1/models`` items (both the 2023 and the
2025 schema era) and Hugging Face ``/api/models?full=true`` items plus README cards, but every
name, text, id and hash is invented here from templates and a seeded RNG.  Rerunning the script
reproduces byte-identical files, so the output is committed next to it.

Layout written::

    data/sample/civitai/models.jsonl   one /api/v1/models item per line
    data/sample/civitai/images.jsonl   every example image (with meta), one per line
    data/sample/hf/models.jsonl        one /api/models?full=true item per line (+ cardData)
    data/sample/hf/cards/<owner>__<name>.md
    data/sample/images/sample_<n>.png  tiny PNGs the replay server hands out for every image URL

Usage: ``python scripts/make_sample_corpus.py [--out data/sample]``
"""

import argparse
import hashlib
import json
import random
import re
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

SEED = 20240611
CDN = "https://image.civitai.com/xG1nkqKTMzGDvpLrqFT7WA"
TARGET_MODELS = 176


@dataclass(frozen=True)
class Concept:
    """One adapter idea: what it depicts and how creators would describe/trigger it."""

    category: str
    title: str
    trigger: str
    tags: tuple[str, ...]
    subject: str  # prompt fragment that shows the concept
    blurb: str  # one sentence for the description
    kind: str = "LORA"
    nsfw: bool = False


def c(category: str, title: str, trigger: str, tags: str, subject: str, blurb: str, **kw: Any) -> Concept:
    """Short constructor so the catalogue below stays one line per concept."""
    return Concept(category, title, trigger, tuple(tags.split(",")), subject, blurb, **kw)


# The catalogue. Categories follow the Stylus taxonomy (style, character, concept, clothing,
# background, pose, building, vehicle, animal, object). Characters are invented.
CONCEPTS: list[Concept] = [
    # --- styles
    c(
        "style",
        "Graffiti Street Art",
        "graffiti, street art",
        "style,graffiti,street art,urban",
        "spray paint graffiti mural on a brick wall",
        "Bold spray-paint graffiti and street-art murals with drips, tags and stencils.",
    ),
    c(
        "style",
        "Urban Spray Paint Mural",
        "spraymural",
        "style,graffiti,mural,street art",
        "colorful spray paint mural on a concrete wall, wildstyle lettering",
        "Wildstyle lettering and big colorful murals like you see under bridges.",
    ),
    c(
        "style",
        "Soft Watercolor",
        "watercolor painting",
        "style,watercolor,painting,traditional art",
        "soft watercolor painting, paper texture, bleeding colors",
        "Gentle watercolor washes with visible paper grain.",
    ),
    c(
        "style",
        "Chinese Ink Wash",
        "ink wash painting, shuimo",
        "style,ink,chinese style,traditional art",
        "chinese ink wash painting, monochrome, brush strokes, negative space",
        "Traditional shuimo ink wash with expressive brush strokes.",
    ),
    c(
        "style",
        "Pixel Art 16-bit",
        "pixel art",
        "style,pixel art,retro,game art",
        "16-bit pixel art, limited palette, sprite",
        "Crisp 16-bit pixel art sprites and scenes; downscale 8x for clean pixels.",
    ),
    c(
        "style",
        "Classic Oil Painting",
        "oil painting, impasto",
        "style,oil painting,painting,classical",
        "oil painting on canvas, thick impasto brush strokes",
        "Rich classical oil painting with visible canvas and impasto.",
    ),
    c(
        "style",
        "90s Anime Screencap",
        "90s anime style",
        "style,anime,retro,cel shading",
        "1990s anime screencap, cel shading, film grain",
        "Retro 90s TV anime look with cel shading and VHS grain.",
    ),
    c(
        "style",
        "Neon Cyberpunk",
        "cyberpunk, neon lights",
        "style,cyberpunk,neon,sci-fi",
        "cyberpunk style, neon lights, rain, holograms",
        "Neon-soaked cyberpunk aesthetic with pink and cyan lighting.",
    ),
    c(
        "style",
        "Ukiyo-e Woodblock",
        "ukiyo-e",
        "style,ukiyo-e,japanese,woodblock print",
        "ukiyo-e woodblock print, flat colors, bold outlines",
        "Edo-period woodblock print look with flat colors and wave patterns.",
    ),
    c(
        "style",
        "Low Poly 3D",
        "low poly",
        "style,low poly,3d,isometric",
        "low poly 3d render, flat shaded polygons",
        "Faceted low-poly renders with flat shading.",
    ),
    c(
        "style",
        "Claymation Stop Motion",
        "claymation, clay figure",
        "style,claymation,stop motion,3d",
        "claymation, plasticine figure, stop motion, fingerprints on clay",
        "Handmade plasticine / stop-motion look.",
    ),
    c(
        "style",
        "Pencil Sketch",
        "pencil sketch, graphite",
        "style,sketch,drawing,monochrome",
        "graphite pencil sketch, cross hatching, rough lines",
        "Loose graphite sketches with hatching.",
    ),
    c(
        "style",
        "Stained Glass",
        "stained glass",
        "style,stained glass,colorful",
        "stained glass window, lead lines, glowing colored glass",
        "Cathedral stained-glass panels with lead lines.",
    ),
    c(
        "style",
        "Vaporwave Aesthetic",
        "vaporwave",
        "style,vaporwave,retro,aesthetic",
        "vaporwave aesthetic, pastel gradient, greek bust, palm trees",
        "Pastel 80s/90s vaporwave with glitch and grids.",
    ),
    c(
        "style",
        "Art Nouveau Poster",
        "art nouveau",
        "style,art nouveau,poster,illustration",
        "art nouveau poster, ornate floral frame, flowing lines",
        "Mucha-inspired ornamental posters with floral frames.",
    ),
    c(
        "style",
        "American Comic Book",
        "comic book style, halftone",
        "style,comic,illustration,halftone",
        "comic book panel, bold ink outlines, halftone dots",
        "Bold inks, halftone shading and speech-bubble energy.",
    ),
    c(
        "style",
        "Paper Cut Craft",
        "papercut",
        "style,papercraft,layered paper",
        "layered paper cut art, shadow box, craft paper",
        "Layered paper-cut shadow-box illustrations.",
    ),
    c(
        "style",
        "Chibi Sticker",
        "chibi, sticker",
        "style,chibi,cute,sticker",
        "chibi sticker, white border, cute big head",
        "Cute chibi stickers with a white die-cut border.",
    ),
    c(
        "style",
        "Synthwave Sunset",
        "synthwave",
        "style,synthwave,retro,neon",
        "synthwave, retro sun, grid floor, purple sky",
        "Outrun / synthwave sunsets with chrome and grids.",
    ),
    c(
        "style",
        "Steampunk Illustration",
        "steampunk",
        "style,steampunk,victorian,brass",
        "steampunk, brass gears, victorian machinery",
        "Brass, gears, goggles and Victorian machinery.",
    ),
    c(
        "style",
        "Storybook Illustration",
        "storybook style",
        "style,illustration,storybook,children book",
        "children's storybook illustration, gouache, whimsical",
        "Whimsical gouache children's-book pages.",
    ),
    c(
        "style",
        "Charcoal Drawing",
        "charcoal drawing",
        "style,charcoal,drawing,monochrome",
        "charcoal drawing, smudged, high contrast",
        "Smudgy high-contrast charcoal studies.",
    ),
    c(
        "style",
        "Isometric Diorama",
        "isometric diorama",
        "style,isometric,3d,diorama",
        "isometric diorama, tiny room, soft lighting, 3d",
        "Tiny isometric rooms and dioramas.",
    ),
    c(
        "style",
        "Origami Paper Fold",
        "origami",
        "style,origami,paper,craft",
        "origami folded paper sculpture",
        "Everything folded from paper.",
    ),
    c(
        "style",
        "Embroidery Patch",
        "embroidery",
        "style,embroidery,textile,craft",
        "embroidered patch, stitched thread texture",
        "Stitched embroidery patches and thread textures.",
    ),
    c(
        "style",
        "Vintage Film Photo",
        "film photo, kodak portra",
        "style,photography,film,vintage",
        "analog film photo, kodak portra 400, grain, light leak",
        "Analog 35mm film photography look.",
    ),
    c(
        "style",
        "Gothic Dark Fantasy",
        "dark fantasy",
        "style,dark fantasy,gothic,fantasy",
        "dark fantasy art, gothic, moody lighting",
        "Moody gothic dark-fantasy paintings.",
    ),
    c(
        "style",
        "Mosaic Tiles",
        "mosaic",
        "style,mosaic,tiles,ancient",
        "roman mosaic, small ceramic tiles",
        "Ancient Roman mosaic tiles.",
    ),
    # --- characters (all invented)
    c(
        "character",
        "Hoshino Akari (Original Character)",
        "akari_oc, pink twintails",
        "character,anime,original character,girl",
        "1girl, akari_oc, pink twintails, star hair ornament, idol outfit",
        "My original idol girl Akari with pink twintails.",
    ),
    c(
        "character",
        "Kitsune Miko Yuzu",
        "yuzu_miko, fox ears",
        "character,anime,fox girl,miko",
        "1girl, yuzu_miko, fox ears, fox tail, miko outfit, shrine",
        "Fox shrine maiden Yuzu, my OC.",
    ),
    c(
        "character",
        "Captain Rhea Solis",
        "rhea solis, space captain",
        "character,sci-fi,woman,original character",
        "1girl, rhea solis, space captain uniform, short silver hair",
        "Silver-haired starship captain from my webcomic.",
    ),
    c(
        "character",
        "Lin Xiaoyu Swordswoman",
        "lin xiaoyu, wuxia",
        "character,wuxia,chinese,swordswoman",
        "1girl, lin xiaoyu, wuxia swordswoman, long black hair, jian sword",
        "Wuxia heroine Lin Xiaoyu.",
    ),
    c(
        "character",
        "Mecha Pilot Nanami",
        "nanami pilot, plugsuit",
        "character,anime,mecha,pilot",
        "1girl, nanami pilot, plugsuit, cockpit, headset",
        "Nanami, a mecha pilot OC.",
    ),
    c(
        "character",
        "Witch Apprentice Pippa",
        "pippa witch",
        "character,witch,fantasy,cute",
        "1girl, pippa witch, oversized witch hat, freckles, broom",
        "Clumsy witch apprentice Pippa.",
    ),
    c(
        "character",
        "Detective Kaito Aster",
        "kaito aster, trench coat",
        "character,anime,boy,detective",
        "1boy, kaito aster, detective, trench coat, magnifying glass",
        "Anime detective boy Kaito.",
    ),
    c(
        "character",
        "Frost Princess Elyra",
        "elyra frost",
        "character,fantasy,princess,ice",
        "1girl, elyra frost, ice crown, white hair, snowflakes",
        "Ice princess Elyra with a crystal crown.",
    ),
    c(
        "character",
        "Robo Buddy Bolt",
        "bolt robot",
        "character,robot,cute,mascot",
        "bolt robot, small round robot, antenna, big eyes",
        "Cute round mascot robot.",
    ),
    # --- concepts
    c(
        "concept",
        "Detail Tweaker Slider",
        "",
        "concept,slider,detail,tool",
        "highly detailed, intricate",
        "Slider LoRA: positive weight adds detail, negative removes it (-2 to 2).",
    ),
    c(
        "concept",
        "Lighting Contrast Slider",
        "",
        "concept,slider,lighting,tool",
        "dramatic lighting, high contrast",
        "Slider to push contrast and lighting up or down.",
    ),
    c(
        "concept",
        "Double Exposure",
        "double exposure",
        "concept,double exposure,photography",
        "double exposure, silhouette filled with forest",
        "Double exposure silhouettes.",
    ),
    c(
        "concept",
        "Glowing Runes",
        "glowing runes",
        "concept,magic,fantasy,glow",
        "glowing runes, magic circle, particles",
        "Magic circles and glowing runes.",
    ),
    c(
        "concept",
        "Floating Islands",
        "floating island",
        "concept,fantasy,sky,landscape",
        "floating islands in the sky, waterfalls falling into clouds",
        "Sky islands with waterfalls.",
    ),
    c(
        "concept",
        "Made of Crystal",
        "crystal, made of crystal",
        "concept,crystal,material,transformation",
        "made of crystal, translucent, refraction",
        "Turns any subject into crystal.",
    ),
    c(
        "concept",
        "Hologram Effect",
        "hologram",
        "concept,hologram,sci-fi,effect",
        "hologram, translucent blue, scanlines",
        "Blue sci-fi hologram look.",
    ),
    c(
        "concept",
        "Miniature Tilt-Shift",
        "tilt shift, miniature",
        "concept,tilt shift,photography,miniature",
        "tilt-shift photo, miniature world, shallow depth of field",
        "Makes scenes look like tiny models.",
    ),
    c(
        "concept",
        "Made of Fire",
        "fire elemental, made of fire",
        "concept,fire,elemental,effect",
        "made of fire, flames, embers",
        "Fire elemental transformation.",
    ),
    # --- clothing
    c(
        "clothing",
        "Hanfu Dress",
        "hanfu",
        "clothing,hanfu,chinese clothes,traditional",
        "1girl, hanfu, flowing sleeves, hair ornament",
        "Traditional Chinese hanfu with flowing sleeves.",
    ),
    c(
        "clothing",
        "Kimono Collection",
        "kimono",
        "clothing,kimono,japanese clothes,traditional",
        "1girl, kimono, obi, floral pattern",
        "Patterned kimonos and yukatas.",
    ),
    c(
        "clothing",
        "Knight Plate Armor",
        "plate armor",
        "clothing,armor,knight,medieval",
        "full plate armor, knight, cape",
        "Detailed medieval plate armor.",
    ),
    c(
        "clothing",
        "Samurai Armor",
        "samurai armor, kabuto",
        "clothing,armor,samurai,japanese",
        "samurai armor, kabuto helmet, katana",
        "Japanese samurai armor (o-yoroi).",
    ),
    c(
        "clothing",
        "Qipao Cheongsam",
        "qipao, cheongsam",
        "clothing,qipao,chinese clothes,dress",
        "1girl, qipao, cheongsam, embroidered dress",
        "Elegant qipao dresses.",
    ),
    c(
        "clothing",
        "Streetwear Hoodie",
        "oversized hoodie, streetwear",
        "clothing,streetwear,hoodie,fashion",
        "oversized hoodie, cargo pants, sneakers, streetwear",
        "Oversized streetwear fits.",
    ),
    c(
        "clothing",
        "Witch Outfit",
        "witch outfit",
        "clothing,witch,fantasy,hat",
        "witch hat, black cloak, witch outfit",
        "Classic witch outfits and hats.",
    ),
    c(
        "clothing",
        "Sci-fi Bodysuit",
        "scifi bodysuit",
        "clothing,sci-fi,bodysuit,armor",
        "sci-fi bodysuit, glowing lines, armored plates",
        "Sleek sci-fi bodysuits with glowing trims.",
    ),
    c(
        "clothing",
        "School Uniform",
        "serafuku",
        "clothing,school uniform,anime,serafuku",
        "serafuku, sailor collar, pleated skirt",
        "Japanese sailor school uniform.",
    ),
    c(
        "clothing",
        "Wedding Dress",
        "wedding dress",
        "clothing,wedding dress,white dress,veil",
        "white wedding dress, lace, veil, bouquet",
        "Lace wedding dresses with veils.",
    ),
    # --- backgrounds
    c(
        "background",
        "Cityscape at Night",
        "night cityscape",
        "background,cityscape,city,night",
        "city skyline at night, lights, skyscrapers",
        "Night city skylines for backgrounds.",
    ),
    c(
        "background",
        "Enchanted Forest",
        "enchanted forest",
        "background,forest,fantasy,nature",
        "enchanted forest, glowing mushrooms, fireflies, mist",
        "Misty magical forests.",
    ),
    c(
        "background",
        "Japanese Shrine",
        "shinto shrine, torii",
        "background,shrine,japanese,architecture",
        "shinto shrine, red torii gate, stone lanterns",
        "Shrines and torii gates.",
    ),
    c(
        "background",
        "Desert Dunes",
        "desert dunes",
        "background,desert,landscape,sand",
        "sand dunes, desert, heat haze, blue sky",
        "Endless desert dunes.",
    ),
    c(
        "background",
        "Snowy Mountains",
        "snowy mountains",
        "background,mountains,snow,landscape",
        "snowy mountain range, alpine, clear sky",
        "Alpine snowy mountains.",
    ),
    c(
        "background",
        "Cozy Library Interior",
        "cozy library",
        "background,library,interior,books",
        "cozy library interior, bookshelves, warm lamp light",
        "Warm cozy library interiors.",
    ),
    c(
        "background",
        "Beach Sunset",
        "beach sunset",
        "background,beach,sunset,ocean",
        "beach at sunset, waves, orange sky",
        "Golden-hour beaches.",
    ),
    c(
        "background",
        "Starry Night Sky",
        "starry sky, milky way",
        "background,sky,stars,night",
        "starry night sky, milky way, meteor",
        "Milky way and starry skies.",
    ),
    c(
        "background",
        "Ancient Ruins",
        "ancient ruins",
        "background,ruins,fantasy,architecture",
        "overgrown ancient ruins, vines, columns",
        "Overgrown temple ruins.",
    ),
    # --- poses
    c(
        "pose",
        "Sitting on Chair Pose",
        "sitting on chair",
        "pose,sitting,chair",
        "sitting on chair, crossed legs",
        "Reliable sitting-on-chair poses.",
    ),
    c(
        "pose",
        "Dynamic Action Pose",
        "dynamic pose, action",
        "pose,action,dynamic,fighting",
        "dynamic action pose, jumping kick, motion blur",
        "Dynamic fighting / action poses.",
    ),
    c(
        "pose",
        "Looking Back Over Shoulder",
        "looking back",
        "pose,looking back,portrait",
        "looking back over shoulder, from behind",
        "Over-the-shoulder look-back pose.",
    ),
    c(
        "pose",
        "Peace Sign Selfie",
        "peace sign, selfie",
        "pose,selfie,peace sign,hand",
        "selfie, peace sign, arm up",
        "Selfie with peace sign, fixes hands a bit.",
    ),
    c(
        "pose",
        "Hands on Hips",
        "hands on hips",
        "pose,hands on hips,standing",
        "standing, hands on hips, confident",
        "Confident hands-on-hips pose.",
    ),
    # --- buildings
    c(
        "building",
        "Chinese Pagoda",
        "pagoda",
        "building,pagoda,chinese,architecture",
        "chinese pagoda, tiered roofs, red pillars",
        "Tiered Chinese pagodas.",
    ),
    c(
        "building",
        "Gothic Cathedral",
        "gothic cathedral",
        "building,cathedral,gothic,architecture",
        "gothic cathedral, flying buttresses, rose window",
        "Gothic cathedrals inside and out.",
    ),
    c(
        "building",
        "Cottagecore House",
        "cottage, cottagecore",
        "building,cottage,house,cottagecore",
        "thatched cottage, flower garden, cottagecore",
        "Cozy cottages with gardens.",
    ),
    c(
        "building",
        "Treehouse",
        "treehouse",
        "building,treehouse,fantasy,forest",
        "wooden treehouse in a giant tree, rope bridge",
        "Fantasy treehouses.",
    ),
    c(
        "building",
        "Lighthouse",
        "lighthouse",
        "building,lighthouse,sea,coast",
        "lighthouse on a cliff, stormy sea",
        "Lighthouses on cliffs.",
    ),
    c(
        "building",
        "Japanese Castle",
        "japanese castle",
        "building,castle,japanese,architecture",
        "japanese castle, stone walls, cherry blossoms",
        "Himeji-style castles.",
    ),
    # --- vehicles
    c(
        "vehicle",
        "Cafe Racer Motorcycle",
        "cafe racer motorcycle",
        "vehicle,motorcycle,bike",
        "cafe racer motorcycle, chrome, leather seat",
        "Vintage cafe racer motorcycles.",
    ),
    c(
        "vehicle",
        "Vintage Car",
        "vintage car",
        "vehicle,car,vintage,retro",
        "1950s vintage car, chrome bumper",
        "Classic 50s cars.",
    ),
    c(
        "vehicle",
        "Spaceship Design",
        "spaceship",
        "vehicle,spaceship,sci-fi,space",
        "sleek spaceship, engines glowing, space",
        "Sci-fi spaceship concept art.",
    ),
    c(
        "vehicle",
        "Giant Mecha",
        "mecha, giant robot",
        "vehicle,mecha,robot,sci-fi",
        "giant mecha, mechanical details, city ruins",
        "Giant robots with heavy detail.",
    ),
    c(
        "vehicle",
        "Steam Locomotive",
        "steam locomotive",
        "vehicle,train,steam,locomotive",
        "steam locomotive, smoke, railway",
        "Steam trains.",
    ),
    c(
        "vehicle",
        "Sailing Ship",
        "sailing ship, galleon",
        "vehicle,ship,sailing,pirate",
        "sailing galleon, billowing sails, ocean waves",
        "Tall ships and galleons.",
    ),
    # --- animals
    c(
        "animal",
        "Corgi Dog",
        "corgi",
        "animal,dog,corgi,pet",
        "a corgi, welsh corgi dog, fluffy, short legs",
        "Cute welsh corgis with their short legs and fluffy butts.",
    ),
    c(
        "animal",
        "Fluffy Cats",
        "fluffy cat",
        "animal,cat,pet,cute",
        "a fluffy cat, whiskers",
        "Fluffy cats of all kinds.",
    ),
    c(
        "animal",
        "Black Cat",
        "black cat",
        "animal,cat,black cat",
        "a black cat, yellow eyes",
        "Sleek black cats.",
    ),
    c(
        "animal",
        "Eastern Dragon",
        "chinese dragon, loong",
        "animal,dragon,chinese,mythical",
        "chinese dragon, loong, long serpentine body, clouds",
        "Serpentine eastern dragons.",
    ),
    c(
        "animal",
        "Western Dragon",
        "western dragon",
        "animal,dragon,fantasy,creature",
        "western dragon, wings, scales, breathing fire",
        "Winged western dragons.",
    ),
    c(
        "animal",
        "Shiba Inu",
        "shiba inu",
        "animal,dog,shiba inu,pet",
        "a shiba inu dog, curled tail",
        "Shiba inu dogs.",
    ),
    c("animal", "Red Fox", "red fox", "animal,fox,wildlife", "a red fox in snow", "Red foxes in nature."),
    c(
        "animal",
        "Koi Fish",
        "koi fish",
        "animal,fish,koi,japanese",
        "koi fish swimming, pond, ripples",
        "Koi fish ponds.",
    ),
    c(
        "animal",
        "Giant Panda",
        "panda",
        "animal,panda,bear,cute",
        "a giant panda eating bamboo",
        "Pandas being pandas.",
    ),
    c(
        "animal",
        "Owl",
        "owl",
        "animal,owl,bird",
        "an owl on a branch, big eyes",
        "Owls with detailed feathers.",
    ),
    c(
        "animal",
        "Wolf",
        "wolf",
        "animal,wolf,wildlife",
        "a grey wolf howling at the moon",
        "Wolves and wolf packs.",
    ),
    # --- objects
    c(
        "object",
        "Fantasy Swords",
        "fantasy sword",
        "object,sword,weapon,fantasy",
        "ornate fantasy sword, glowing blade",
        "Ornate fantasy swords.",
    ),
    c(
        "object",
        "Potion Bottles",
        "potion bottle",
        "object,potion,bottle,fantasy",
        "potion bottles, glowing liquid, cork",
        "Glowing potion bottles.",
    ),
    c(
        "object",
        "Paper Lanterns",
        "paper lantern",
        "object,lantern,festival",
        "paper lanterns, warm glow, festival",
        "Festival paper lanterns.",
    ),
    c(
        "object",
        "Crystal Ball",
        "crystal ball",
        "object,crystal ball,magic",
        "crystal ball, swirling mist inside",
        "Fortune-teller crystal balls.",
    ),
    c(
        "object",
        "Sneaker Design",
        "sneakers",
        "object,sneakers,shoes,fashion",
        "sneaker product shot, studio lighting",
        "Sneaker concept designs.",
    ),
    c(
        "object",
        "Fancy Cakes",
        "cake, dessert",
        "object,cake,food,dessert",
        "fancy layered cake, strawberries, cream",
        "Food photography of cakes.",
    ),
    # --- textual inversions and a checkpoint (filtered out later by type)
    c(
        "concept",
        "BadHands Negative Embedding",
        "badhands_neg",
        "concept,negative embedding,hands",
        "bad hands",
        "Put it in the negative prompt to fix hands.",
        kind="TextualInversion",
    ),
    c(
        "style",
        "Soft Pastel Embedding",
        "pastelemb",
        "style,pastel,embedding",
        "pastel colors",
        "Textual inversion for soft pastel colors.",
        kind="TextualInversion",
    ),
    c(
        "character",
        "Dreamgirl Face Embedding",
        "dreamface",
        "character,face,embedding",
        "beautiful face",
        "Consistent face embedding.",
        kind="TextualInversion",
    ),
    c(
        "style",
        "DreamCanvas Mix",
        "",
        "base model,checkpoint,anime,semi-realistic",
        "masterpiece",
        "A general purpose merged checkpoint.",
        kind="Checkpoint",
    ),
    # --- NSFW-flagged models (kept mild in text; used to test filtering)
    c(
        "clothing",
        "Lingerie Pinup",
        "pinup lingerie",
        "clothing,lingerie,pinup,sexy",
        "1girl, lingerie, pinup pose",
        "Pinup lingerie set.",
        nsfw=True,
    ),
    c(
        "concept",
        "Boudoir Photography",
        "boudoir",
        "concept,boudoir,photography,sexy",
        "boudoir photo, bedroom, soft light",
        "Boudoir photography style.",
        nsfw=True,
    ),
    c(
        "pose",
        "Bedroom Pose Pack",
        "bedroom pose",
        "pose,bed,sexy",
        "lying on bed, pose",
        "Assorted suggestive poses.",
        nsfw=True,
    ),
    c(
        "style",
        "Gravure Magazine",
        "gravure",
        "style,gravure,photography,sexy",
        "gravure photo, swimsuit, magazine",
        "Gravure magazine style.",
        nsfw=True,
    ),
]

# Variant suffixes for second adapters on the same concept (a different creator re-doing it).
VARIANT_SUFFIX = ["XL", "v2", "Flux", "Pony", "Style", "LoCon", "Lite", "Ultra"]

CREATORS = [
    "PixelMuse",
    "inkwell_ai",
    "neonkoi",
    "Lumen_Atelier",
    "mochi_brush",
    "corgi_enjoyer",
    "ArtByRaven",
    "stellar_loras",
    "yuzuAI",
    "BrushAndByte",
    "tanuki_tensor",
    "KaiSketch",
    "lowpoly_larry",
    "Aurelia_Art",
    "sprayking",
    "ghostwriter42",
    "mizu_lora",
    "VelvetPixel",
]

SAMPLERS = ["DPM++ 2M Karras", "Euler a", "DPM++ SDE Karras", "DDIM", "Euler", "DPM++ 2M SDE Karras"]
CHECKPOINTS = {
    "SD 1.5": [
        "v1-5-pruned-emaonly",
        "dreamshaper_8",
        "realisticVisionV51",
        "anythingV5",
        "revAnimated_v122",
    ],
    "SD 2.1": ["v2-1_768-ema-pruned"],
    "SDXL 1.0": ["sd_xl_base_1.0", "juggernautXL_v9", "animagineXL_v31"],
    "Pony": ["ponyDiffusionV6XL", "autismmixSDXL_autismmixPony"],
    "Flux.1 D": ["flux1-dev-fp8"],
    "Illustrious": ["illustriousXL_v01", "noobaiXL_v10"],
}
SIZES = {
    "SD 1.5": (512, 768),
    "SD 2.1": (768, 768),
    "SDXL 1.0": (832, 1216),
    "Pony": (832, 1216),
    "Flux.1 D": (896, 1152),
    "Illustrious": (832, 1216),
}
QUALITY = [
    "masterpiece, best quality",
    "best quality, ultra detailed",
    "(masterpiece:1.2), best quality, highres",
    "high quality, sharp focus",
    "8k, intricate details",
]
NEGATIVE = [
    "(worst quality:1.4), (low quality:1.4), lowres, bad anatomy, bad hands, watermark, text",
    "easynegative, blurry, jpeg artifacts, signature, extra fingers",
    "lowres, bad hands, missing fingers, cropped, worst quality, low quality, username",
    "nsfw, ugly, deformed, disfigured, bad proportions",
    "score_4, score_5, score_6, blurry, watermark",
]
STYLE_SUBJECTS = [
    "a corgi",
    "1girl, long hair",
    "a cat sitting on a windowsill",
    "a city street",
    "an old man with a beard",
    "a red sports car",
    "a castle on a hill",
    "a fox in the forest",
    "a teapot",
    "a dragon",
    "a samurai",
    "a lighthouse",
    "a bowl of ramen",
    "a corgi wearing sunglasses",
    "a girl in hanfu",
    "a robot",
]
SCENES = [
    "outdoors, sunlight",
    "night, moonlight",
    "simple background",
    "city background",
    "forest",
    "indoors, warm lighting",
    "on the wall",
    "cinematic lighting",
    "depth of field",
    "snow",
]


def slug(text: str) -> str:
    """Lower-case identifier used for file aliases and HF repo names."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def hex_upper(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789ABCDEF") for _ in range(n))


def uuid_like(rng: random.Random) -> str:
    h = "".join(rng.choice("0123456789abcdef") for _ in range(32))
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def blurhash(rng: random.Random) -> str:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"
    return "U" + "".join(rng.choice(alphabet) for _ in range(35))


def iso(dt: datetime, z: bool = True) -> str:
    """Civitai timestamps: millisecond precision with a trailing Z."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}" + ("Z" if z else "")


@dataclass
class IdAllocator:
    """Hands out unique, realistic-looking ids from disjoint ranges."""

    rng: random.Random
    used: set[int] = field(default_factory=set)

    def take(self, lo: int, hi: int) -> int:
        while True:
            value = self.rng.randint(lo, hi)
            if value not in self.used:
                self.used.add(value)
                return value


# ---------------------------------------------------------------------------------------------
# Civitai


def description_html(
    rng: random.Random, concept: Concept, alias: str, trigger: str, weight: tuple[float, float], creator: str
) -> str:
    """Creator-written rich text, in the HTML dialect the Civitai editor produces."""
    parts = [f"<p>{concept.blurb}</p>"]
    if rng.random() < 0.5:
        parts.append(f'<h3 id="how-to-use-{alias[:6]}">How to use</h3>')
    lines = []
    if trigger:
        lines.append(f"<li><p>Trigger word: <strong>{trigger}</strong></p></li>")
    style = rng.randrange(3)
    if style == 0:
        lines.append(f"<li><p>Recommended weight {weight[0]:.1f}-{weight[1]:.1f}</p></li>")
    elif style == 1:
        lines.append(
            f"<li><p>&lt;lora:{alias}:{weight[1]:.1f}&gt; works best, lower it if it overcooks</p></li>"
        )
    else:
        lines.append(f"<li><p>Strength: {weight[1]:.1f}, experiment as you like</p></li>")
    lines.append(
        f"<li><p>Sampler: {rng.choice(SAMPLERS)}, {rng.choice([20, 25, 28, 30])} steps, "
        f"CFG {rng.choice([5, 6, 7])}</p></li>"
    )
    parts.append("<ul>" + "".join(lines) + "</ul>")
    if rng.random() < 0.4:
        parts.append(
            f"<p>Trained on {rng.randint(15, 120)} images for {rng.randint(6, 20)} epochs. "
            "Works with most anime and realistic checkpoints.</p>"
        )
    if rng.random() < 0.35:
        parts.append(
            f'<p>If you like it please leave a review and check my <a target="_blank" rel="ugc" '
            f'href="https://ko-fi.com/{creator.lower()}">Ko-fi</a> ❤️</p>'
        )
    if rng.random() < 0.15:
        parts.append(
            f'<p>Also on Hugging Face: <a target="_blank" rel="ugc" '
            f'href="https://huggingface.co/{creator.lower()}/{alias}">{creator.lower()}/{alias}</a></p>'
        )
    if rng.random() < 0.05:
        parts.append("<script>window.trackCivitaiView && trackCivitaiView();</script>")
    return "".join(parts)


def make_prompt(
    rng: random.Random, concept: Concept, alias: str, trigger: str, weight: tuple[float, float], base: str
) -> str:
    """An example prompt as creators post them (quality tags, trigger, subject, optional <lora:>)."""
    bits: list[str] = []
    if base == "Pony":
        bits.append("score_9, score_8_up, score_7_up")
    elif base != "Flux.1 D":
        bits.append(rng.choice(QUALITY))
    if concept.category in ("style", "concept"):
        subject = rng.choice(STYLE_SUBJECTS)
        bits.append(
            f"{concept.subject}, {subject}" if rng.random() < 0.6 else f"{subject}, {concept.subject}"
        )
    else:
        bits.append(concept.subject)
    if trigger and trigger.split(",")[0] not in bits[-1]:
        bits.insert(1, trigger)
    bits.append(rng.choice(SCENES))
    if base != "Flux.1 D" and rng.random() < 0.7:
        w = round(rng.uniform(*weight), 1)
        bits.append(f"<lora:{alias}:{w}>")
    if base == "Flux.1 D":
        return ", ".join(bits[1:]) if len(bits) > 1 else bits[0]
    return ", ".join(bits)


def make_images(
    rng: random.Random,
    ids: IdAllocator,
    concept: Concept,
    model_id: int,
    version_id: int,
    alias: str,
    trigger: str,
    weight: tuple[float, float],
    base: str,
    when: datetime,
    nsfw_model: bool,
    checkpoint: str,
) -> list[dict[str, Any]]:
    """Full example image list for one version (written to images.jsonl, with meta)."""
    count = rng.randint(3, 12)
    width, height = SIZES[base]
    negative = NEGATIVE[4] if base == "Pony" else rng.choice(NEGATIVE[:4])
    images = []
    for _ in range(count):
        image_id = ids.take(100000, 9999999)
        if nsfw_model:
            level = rng.choice([4, 8, 8, 16])
        else:
            # Mostly PG with the odd PG13/R image, so SFW filtering has something to drop.
            level = rng.choices([1, 2, 4], weights=[86, 10, 4])[0]
        steps = rng.choice([20, 25, 28, 30, 35])
        meta: dict[str, Any] = {
            "prompt": make_prompt(rng, concept, alias, trigger, weight, base),
            "negativePrompt": "" if base == "Flux.1 D" else negative,
            "seed": rng.randint(1, 4294967295),
            "steps": steps,
            "sampler": rng.choice(SAMPLERS),
            "cfgScale": 3.5 if base == "Flux.1 D" else rng.choice([5, 6, 7, 7.5, 8]),
            "Size": f"{width}x{height}",
            "Model": checkpoint,
            "resources": [
                {
                    "name": alias,
                    "type": "lora" if concept.kind != "TextualInversion" else "embed",
                    "weight": round(rng.uniform(*weight), 2),
                },
                {"name": checkpoint, "type": "model", "hash": hex_upper(rng, 10).lower()},
            ],
        }
        if rng.random() < 0.3:
            meta["Clip skip"] = "2"
        images.append(
            {
                "id": image_id,
                "modelId": model_id,
                "modelVersionId": version_id,
                "url": f"{CDN}/{uuid_like(rng)}/width={width}/{image_id}.jpeg",
                "width": width,
                "height": height,
                "hash": blurhash(rng),
                "nsfwLevel": level,
                "createdAt": iso(when + timedelta(minutes=rng.randint(5, 3000))),
                "postId": ids.take(10000, 999999),
                "username": None,
                "meta": meta,
            }
        )
    return images


NSFW_STR = {1: "None", 2: "Soft", 4: "Mature", 8: "X", 16: "X"}


def embed_image(img: dict[str, Any], era: int) -> dict[str, Any]:
    """The shape an image has when embedded in a /models item of the given era."""
    if era == 2023:
        return {
            "id": img["id"],
            "url": img["url"].replace(f"width={img['width']}", "width=450"),
            "nsfw": NSFW_STR[img["nsfwLevel"]],
            "width": img["width"],
            "height": img["height"],
            "hash": img["hash"],
            "meta": img["meta"],
        }
    return {
        "url": img["url"],
        "nsfwLevel": img["nsfwLevel"],
        "width": img["width"],
        "height": img["height"],
        "hash": img["hash"],
        "type": "image",
        "minor": False,
        "poi": False,
        "hasMeta": True,
        "hasPositivePrompt": True,
        "onSite": False,
        "remixOfId": None,
    }


def make_file(
    rng: random.Random,
    ids: IdAllocator,
    alias: str,
    version_id: int,
    era: int,
    kind: str,
    when: datetime,
    pickle: bool = False,
) -> dict[str, Any]:
    """Primary model file of a version with the hash set Civitai computes."""
    sha = hex_upper(rng, 64)
    ext = ".pt" if pickle else ".safetensors"
    size_kb = {
        "LORA": rng.choice([9408.2, 18829.1, 37861.6, 147570.9, 223107.2]),
        "LoCon": 52114.7,
        "DoRA": 71230.5,
        "TextualInversion": 24.1,
        "Checkpoint": 2082642.4,
    }[kind]
    size_kb = round(size_kb * rng.uniform(0.9, 1.1), 4)
    hashes = {
        "AutoV1": hex_upper(rng, 8),
        "AutoV2": sha[:10],
        "SHA256": sha,
        "CRC32": hex_upper(rng, 8),
        "BLAKE3": hex_upper(rng, 64),
    }
    if era == 2025:
        hashes["AutoV3"] = hex_upper(rng, 12)
    meta: dict[str, Any] = {"format": "PickleTensor" if pickle else "SafeTensor"}
    if era == 2023 or rng.random() < 0.5:
        meta = {
            "fp": rng.choice(["fp16", "fp16", "fp32", "bf16"]),
            "size": rng.choice(["full", "pruned"]),
            **meta,
        }
    return {
        "name": f"{alias}{ext}",
        "id": ids.take(10000, 1999999),
        "sizeKB": size_kb,
        "type": "Model",
        "metadata": meta,
        "pickleScanResult": "Success",
        "pickleScanMessage": "No Pickle imports" if not pickle else "1 import(s) detected",
        "virusScanResult": "Success",
        "virusScanMessage": None,
        "scannedAt": iso(when + timedelta(minutes=4)),
        "hashes": hashes,
        "downloadUrl": f"https://civitai.com/api/download/models/{version_id}",
        "primary": True,
    }


def make_model(
    rng: random.Random,
    ids: IdAllocator,
    concept: Concept,
    title: str,
    era: int,
    base: str,
    kind: str,
    creator: str,
    n_versions: int,
    special: str,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One /api/v1/models item plus its full image list."""
    model_id = ids.take(10000, 99999)
    alias_root = slug(title)[:28].strip("_")
    trigger = concept.trigger
    lo = rng.choice([0.5, 0.6, 0.7])
    weight = (lo, round(lo + rng.choice([0.2, 0.3, 0.4]), 1))
    if "slider" in title.lower():
        weight = (-2.0, 2.0)
    if era == 2023:
        start = datetime(2023, 1, 5, tzinfo=UTC) + timedelta(minutes=rng.randint(0, 170 * 24 * 60))
    else:
        start = datetime(2024, 6, 1, tzinfo=UTC) + timedelta(minutes=rng.randint(0, 480 * 24 * 60))
    start = start.replace(microsecond=rng.randint(0, 999) * 1000)
    checkpoint = rng.choice(CHECKPOINTS[base])
    versions: list[dict[str, Any]] = []
    all_images: list[dict[str, Any]] = []
    total_downloads = 0
    level_or = 0
    for vi in range(n_versions):
        # Index 0 is the newest version, as the API orders them.
        vnum = n_versions - vi
        alias = f"{alias_root}_v{vnum}" if n_versions > 1 or rng.random() < 0.5 else alias_root
        version_id = ids.take(10000, 999999)
        created = start + timedelta(days=30 * (n_versions - 1 - vi), minutes=rng.randint(0, 600))
        images = make_images(
            rng,
            ids,
            concept,
            model_id,
            version_id,
            alias,
            trigger,
            weight,
            base,
            created,
            concept.nsfw,
            checkpoint,
        )
        all_images.extend(images)
        downloads = rng.randint(40, 60000) // (vi + 1)
        total_downloads += downloads
        files = (
            []
            if special == "archived"
            else [make_file(rng, ids, alias, version_id, era, kind, created, pickle=special == "pickle")]
        )
        if era == 2025 and files and rng.random() < 0.15:
            extra = make_file(rng, ids, alias + "_dataset", version_id, era, kind, created)
            extra.update(
                name=f"{alias}_training_data.zip",
                type="Training Data",
                sizeKB=round(rng.uniform(2000, 90000), 4),
                metadata={"format": "Other"},
            )
            extra["downloadUrl"] += "?type=Training%20Data"
            del extra["primary"]  # /models omits primary for non-primary files
            files.append(extra)
        vname = f"v{vnum}.0"
        words = (
            [w.strip() for w in trigger.split(",")]
            if trigger and rng.random() < 0.5
            else ([trigger] if trigger else [])
        )
        v_desc = (
            None
            if vi == n_versions - 1
            else f"<p>{vname}: retrained with a cleaner dataset, less overfitting.</p>"
        )
        embedded = [embed_image(img, era) for img in images]
        level = 0
        for img in images:
            level |= img["nsfwLevel"]
        level_or |= level
        if era == 2023:
            version: dict[str, Any] = {
                "id": version_id,
                "modelId": model_id,
                "name": vname,
                "createdAt": iso(created),
                "updatedAt": iso(created + timedelta(hours=rng.randint(1, 200))),
                "trainedWords": words,
                "baseModel": base,
                "earlyAccessTimeFrame": 0,
                "description": v_desc,
                "stats": {
                    "downloadCount": downloads,
                    "ratingCount": rng.randint(0, 80),
                    "rating": round(rng.uniform(4.2, 5.0), 2),
                },
                "files": files,
                "images": embedded,
            }
        else:
            version = {
                "id": version_id,
                "index": vi,
                "name": vname,
                "baseModel": base,
                "baseModelType": "Standard",
                "createdAt": iso(created),
                "publishedAt": iso(created + timedelta(minutes=rng.randint(3, 90))),
                "status": "Published",
                "availability": "Public",
                "nsfwLevel": level,
                **({"description": v_desc} if v_desc else {}),
                "trainedWords": words,
                "covered": base in ("SD 1.5", "SDXL 1.0", "Pony", "Flux.1 D", "Illustrious"),
                "stats": {
                    "downloadCount": downloads,
                    "ratingCount": 0,
                    "rating": 0,
                    "thumbsUpCount": downloads // rng.randint(8, 30),
                    "thumbsDownCount": rng.randint(0, 2),
                },
                "files": files,
                "images": embedded,
            }
        if files:
            version["downloadUrl"] = f"https://civitai.com/api/download/models/{version_id}"
        versions.append(version)
    name = title if n_versions == 1 or rng.random() < 0.5 else f"{title} | {base}"
    desc = description_html(
        rng,
        concept,
        versions[0]["files"][0]["name"].rsplit(".", 1)[0] if versions[0]["files"] else alias_root,
        trigger,
        weight,
        creator,
    )
    tags = list(concept.tags)
    item: dict[str, Any] = {"id": model_id, "name": name, "description": desc}
    if era == 2023:
        item.update(
            {
                "type": kind,
                "poi": False,
                "nsfw": concept.nsfw,
                "allowNoCredit": rng.random() < 0.7,
                "allowCommercialUse": rng.choice(["None", "Image", "Rent", "Sell"]),
                "allowDerivatives": True,
                "allowDifferentLicense": rng.random() < 0.8,
                "stats": {
                    "downloadCount": total_downloads,
                    "favoriteCount": total_downloads // rng.randint(5, 12),
                    "commentCount": rng.randint(0, 60),
                    "ratingCount": rng.randint(0, 120),
                    "rating": round(rng.uniform(4.3, 5.0), 2),
                },
            }
        )
    else:
        commercial: Any = rng.choice(
            [["Image", "RentCivit", "Rent", "Sell"], ["Image"], [], ["Image", "RentCivit"]]
        )
        if rng.random() < 0.2:
            commercial = "{" + ",".join(commercial) + "}"  # Postgres literal, as in the Dec-2025 docs sample
        downloads: int | None = total_downloads if rng.random() > 0.06 else None
        item.update(
            {
                "allowNoCredit": rng.random() < 0.7,
                "allowCommercialUse": commercial,
                "allowDerivatives": True,
                "allowDifferentLicense": rng.random() < 0.8,
                "type": kind,
                "minor": False,
                "sfwOnly": False,
                "poi": False,
                "nsfw": concept.nsfw,
                "nsfwLevel": level_or,
                "availability": "Public",
                "cosmetic": None,
                "supportsGeneration": base != "Pony",
                "stats": {
                    "downloadCount": downloads,
                    "favoriteCount": 0,
                    "thumbsUpCount": total_downloads // rng.randint(8, 30),
                    "thumbsDownCount": rng.randint(0, 3),
                    "commentCount": rng.randint(0, 40),
                    "ratingCount": 0,
                    "rating": 0,
                    "tippedAmountCount": rng.choice([0, 0, 50, 360, 1200]),
                },
            }
        )
    if special == "archived":
        item["mode"] = "Archived"
    item["creator"] = {
        "username": creator,
        "image": f"{CDN}/{uuid_like(rng)}/width=96/{creator}.jpeg" if rng.random() < 0.8 else None,
    }
    item["tags"] = tags
    item["modelVersions"] = versions
    return item, all_images


def plan_models(rng: random.Random) -> list[tuple[Concept, str, int, str, str, str, int, str]]:
    """Decide (concept, title, era, base, type, creator, n_versions, special) for every model."""
    plans = []
    base_choices = ["SD 1.5"] * 6 + ["SDXL 1.0"] * 2 + ["Pony", "Flux.1 D"]
    for i, concept in enumerate(CONCEPTS):
        era = 2023 if i % 2 == 0 else 2025
        plans.append([concept, concept.title, era])
    # Second adapters for a rotating subset, so popular ideas (graffiti, corgi...) have competitors.
    extra_pool = [cc for cc in CONCEPTS if cc.kind == "LORA" and not cc.nsfw]
    must = [
        cc
        for cc in extra_pool
        if cc.title in ("Graffiti Street Art", "Corgi Dog", "Hanfu Dress", "Soft Watercolor")
    ]
    rest = [cc for cc in extra_pool if cc not in must]
    rng.shuffle(rest)
    for j, concept in enumerate(must + rest):
        if len(plans) >= TARGET_MODELS:
            break
        plans.append(
            [
                concept,
                f"{concept.title} {VARIANT_SUFFIX[j % len(VARIANT_SUFFIX)]}",
                2025 if j % 2 == 0 else 2023,
            ]
        )
    out = []
    for concept, title, era in plans:
        kind = concept.kind
        if kind == "LORA" and "LoCon" in title:
            kind = "LoCon"
        elif kind == "LORA" and rng.random() < 0.12:
            kind = rng.choice(["LoCon", "LoCon", "DoRA"])
        if era == 2023:
            base = "SD 1.5" if rng.random() < 0.92 else "SD 2.1"
        else:
            base = rng.choice(base_choices)
            for suffix, b in (("XL", "SDXL 1.0"), ("Flux", "Flux.1 D"), ("Pony", "Pony")):
                if title.endswith(suffix):
                    base = b
        if kind == "Checkpoint":
            base = "SD 1.5"
        creator = "corgi_enjoyer" if "Corgi" in title else rng.choice(CREATORS)
        out.append((concept, title, era, base, kind, creator, 1, ""))
    # Specials at fixed positions (deterministic, easy to find in tests).
    specials = {
        "Hanfu Dress": (2, ""),
        "Soft Watercolor": (2, ""),
        "Neon Cyberpunk": (3, ""),
        "Robo Buddy Bolt": (1, "archived"),
        "Charcoal Drawing": (1, "pickle"),
    }
    final = []
    for concept, title, era, base, kind, creator, nv, sp in out:
        if title in specials:
            nv, sp = specials[title]
        final.append((concept, title, era, base, kind, creator, nv, sp))
    return final


# ---------------------------------------------------------------------------------------------
# Hugging Face

TRAINERS = ["kohya_ss", "diffusers train_dreambooth_lora", "SimpleTuner", "FluxGym", "AutoTrain"]
HF_OWNERS = [
    "pixelforge",
    "lumen-labs",
    "kohaku-fan",
    "ostrich-ai",
    "brushstroke",
    "dogfood-studio",
    "neon-arcade",
    "mizu-labs",
]
HF_BASES = {
    "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", "openrail++", "stable-diffusion-xl"),
    "flux": ("black-forest-labs/FLUX.1-dev", "other", "flux"),
    "sd15": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "creativeml-openrail-m", "stable-diffusion"),
}
HF_CONCEPTS = [
    "Graffiti Street Art",
    "Corgi Dog",
    "Soft Watercolor",
    "Pixel Art 16-bit",
    "Chinese Ink Wash",
    "Ukiyo-e Woodblock",
    "Low Poly 3D",
    "Claymation Stop Motion",
    "Neon Cyberpunk",
    "Hanfu Dress",
    "Kimono Collection",
    "Knight Plate Armor",
    "Enchanted Forest",
    "Cityscape at Night",
    "Eastern Dragon",
    "Fluffy Cats",
    "Giant Mecha",
    "Potion Bottles",
    "Storybook Illustration",
    "Vintage Film Photo",
    "Origami Paper Fold",
    "Isometric Diorama",
    "Shiba Inu",
    "Gothic Cathedral",
    "Art Nouveau Poster",
]


def yaml_str(value: str) -> str:
    """Quote a YAML scalar the way generated cards do (double quotes, escaped)."""
    return json.dumps(value, ensure_ascii=False)


def make_hf(rng: random.Random) -> list[tuple[dict[str, Any], str]]:
    """~25 HF LoRA repos: (list item incl. cardData, README text)."""
    by_title = {cc.title: cc for cc in CONCEPTS}
    out = []
    for i, title in enumerate(HF_CONCEPTS):
        concept = by_title[title]
        owner = "dogfood-studio" if "Corgi" in title or "Shiba" in title else HF_OWNERS[i % len(HF_OWNERS)]
        flavour = ["sdxl", "flux", "sd15"][i % 3]
        base_id, license_id, family_tag = HF_BASES[flavour]
        name = slug(title).replace("_", "-")[:24].strip("-") + (
            "-lora" if flavour != "flux" else "-flux-lora"
        )
        repo = f"{owner}/{name}"
        trigger = concept.trigger.split(",")[0].strip() or slug(title)
        created = datetime(2023, 8, 1, tzinfo=UTC) + timedelta(minutes=rng.randint(0, 700 * 24 * 60))
        modified = created + timedelta(days=rng.randint(0, 120), minutes=rng.randint(0, 1000))
        n_images = rng.randint(2, 3)
        widget = []
        for k in range(n_images):
            subject = rng.choice(STYLE_SUBJECTS) if concept.category == "style" else concept.subject
            text = f"{trigger}, {subject}, {rng.choice(SCENES)}"
            widget.append({"text": text, "output": {"url": f"images/example_{k + 1}.png"}})
        template = "template:diffusion-lora" if flavour == "flux" else "template:sd-lora"
        card_tags = ["text-to-image", "diffusers", "lora", template, family_tag]
        if flavour == "sdxl":
            card_tags.append("diffusers-training")
        lines = [
            "---",
            f"base_model: {base_id}",
            f"instance_prompt: {yaml_str(trigger)}",
            f"license: {license_id}",
        ]
        if license_id == "other":
            lines += [
                "license_name: flux-1-dev-non-commercial-license",
                "license_link: https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md",
            ]
        lines.append("library_name: diffusers")
        lines.append("tags:")
        lines += [f"- {t}" for t in card_tags]
        lines.append("widget:")
        for w in widget:
            lines += [f"- text: {yaml_str(w['text'])}", "  output:", f"    url: {w['output']['url']}"]
        lines.append("---")
        pretty = title.replace(" Dog", "")
        body = [
            "",
            f"# {pretty} LoRA",
            "",
            "<Gallery />",
            "",
            "## Model description",
            "",
            f"{concept.blurb} LoRA adapter for `{base_id}` trained with {rng.choice(TRAINERS)}.",
            "",
            f"Recommended LoRA scale: {rng.choice(['0.7', '0.8', '0.6-0.9', '1.0'])}.",
            "",
            "## Trigger words",
            "",
            f"You should use `{trigger}` to trigger the image generation.",
            "",
            "## Download model",
            "",
            "Weights for this model are available in Safetensors format. "
            f"[Download](/{repo}/tree/main) them in the "
            "Files & versions tab.",
            "",
            "## Use it with the [🧨 diffusers library](https://github.com/huggingface/diffusers)",
            "",
            "```py",
            "from diffusers import AutoPipelineForText2Image",
            "import torch",
            "",
            f"pipeline = AutoPipelineForText2Image.from_pretrained('{base_id}', "
            "torch_dtype=torch.float16).to('cuda')",
            f"pipeline.load_lora_weights('{repo}', weight_name='pytorch_lora_weights.safetensors')",
            f"image = pipeline('{widget[0]['text']}').images[0]",
            "```",
            "",
        ]
        card = "\n".join(lines + body)
        siblings = (
            [".gitattributes", "README.md"]
            + [w["output"]["url"] for w in widget]
            + ["pytorch_lora_weights.safetensors"]
        )
        tags = card_tags + [
            "safetensors",
            f"base_model:{base_id}",
            f"base_model:adapter:{base_id}",
            f"license:{license_id}",
            "region:us",
        ]
        card_data = {
            "base_model": base_id,
            "instance_prompt": trigger,
            "license": license_id,
            "library_name": "diffusers",
            "tags": card_tags,
            "widget": widget,
        }
        item = {
            "_id": "".join(rng.choice("0123456789abcdef") for _ in range(24)),
            "id": repo,
            "modelId": repo,
            "author": owner,
            "sha": "".join(rng.choice("0123456789abcdef") for _ in range(40)),
            "lastModified": iso(modified),
            "createdAt": iso(created),
            "private": False,
            "gated": "manual" if i == 7 else False,
            "disabled": False,
            "likes": rng.randint(0, 900),
            "downloads": rng.randint(10, 40000),
            "trendingScore": rng.randint(0, 30),
            "tags": tags,
            "pipeline_tag": "text-to-image",
            "library_name": "diffusers",
            "siblings": [{"rfilename": s} for s in sorted(siblings)],
            "widgetData": [{"text": w["text"], "output": {"url": w["output"]["url"]}} for w in widget],
            "cardData": card_data,
        }
        out.append((item, card))
    return out


# ---------------------------------------------------------------------------------------------
# PNGs


def png_bytes(width: int, height: int, pixel: Any) -> bytes:
    """Minimal RGB PNG writer (no Pillow needed; byte-stable across machines)."""
    raw = bytearray()
    for y in range(height):
        raw.append(0)
        for x in range(width):
            raw.extend(pixel(x, y))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(raw), 9))
        + chunk(b"IEND", b"")
    )


PALETTE = [
    ((230, 90, 60), (250, 200, 80)),
    ((40, 90, 200), (120, 220, 240)),
    ((30, 140, 80), (200, 240, 120)),
    ((120, 40, 160), (250, 120, 200)),
    ((20, 20, 30), (90, 90, 120)),
    ((240, 240, 230), (200, 170, 120)),
    ((200, 30, 60), (30, 30, 200)),
    ((250, 160, 40), (60, 30, 20)),
]


def sample_pngs() -> list[bytes]:
    """Eight 64x64 gradients (the replay server maps every image URL to one of them)."""
    out = []
    for i, (a, b) in enumerate(PALETTE):

        def pixel(x: int, y: int, a: tuple[int, ...] = a, b: tuple[int, ...] = b, i: int = i) -> bytes:
            t = (x + y) / 126 if i % 2 == 0 else y / 63
            return bytes(int(a[k] + (b[k] - a[k]) * t) for k in range(3))

        out.append(png_bytes(64, 64, pixel))
    return out


# ---------------------------------------------------------------------------------------------


def dump_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")


def generate(out: Path) -> dict[str, Any]:
    """Write the whole corpus under ``out`` and return summary statistics."""
    rng = random.Random(SEED)
    ids = IdAllocator(random.Random(SEED + 1))
    models, images = [], []
    for concept, title, era, base, kind, creator, nv, special in plan_models(rng):
        item, imgs = make_model(rng, ids, concept, title, era, base, kind, creator, nv, special)
        models.append(item)
        images.extend(imgs)
    for sub in ("civitai", "hf", "images"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    dump_jsonl(out / "civitai" / "models.jsonl", models)
    dump_jsonl(out / "civitai" / "images.jsonl", images)
    hf = make_hf(random.Random(SEED + 2))
    dump_jsonl(out / "hf" / "models.jsonl", [item for item, _ in hf])
    (out / "hf" / "cards").mkdir(parents=True, exist_ok=True)
    for item, card in hf:
        (out / "hf" / "cards" / f"{item['id'].replace('/', '__')}.md").write_text(
            card, encoding="utf-8", newline="\n"
        )
    (out / "images").mkdir(parents=True, exist_ok=True)
    for n, data in enumerate(sample_pngs()):
        (out / "images" / f"sample_{n}.png").write_bytes(data)
    digest = hashlib.sha256((out / "civitai" / "models.jsonl").read_bytes()).hexdigest()[:12]
    return {
        "models": len(models),
        "versions": sum(len(m["modelVersions"]) for m in models),
        "images": len(images),
        "hf_repos": len(hf),
        "models_sha256_12": digest,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent.parent / "data" / "sample"
    )
    args = parser.parse_args()
    print(json.dumps(generate(args.out)))


if __name__ == "__main__":
    main()
