"""Generated sentences with broad phonetic coverage, for espeak-ng training data in eight languages.

No text corpus can be downloaded, so each language has a compact hand-written vocabulary: a few
hundred common everyday words and a few dozen short set phrases, in the language's normal script,
chosen so that together they exercise every phoneme espeak-ng uses for that language (rare ones
included: English /ʒ ɔɪ/, French nasal vowels and /ɥ ɲ/, German /ç x pf ʏ/, Spanish /ɲ x θ r/,
Hindi retroflex, aspirated and nukta consonants, Arabic emphatics and pharyngeals, Japanese palatalised
and geminate morae, Mandarin initials and finals). ``sentences`` strings them into seeded
pseudo-sentences of 3-12 words with phrase punctuation; they are not grammatical prose, but they give
espeak natural word shapes and clause-level prosody, which is what synthetic training data needs.

Script choices, checked with ``espeak-ng -x --ipa`` (espeak-ng 1.51):

- ja: kana only. espeak's Japanese voice has no kanji dictionary (kanji are read out as "Chinese
  letter" in English). Words are separated by spaces, as in kana-only children's text, which gives
  espeak word boundaries. The topic and direction particles are written as pronounced (わ, え),
  because espeak reads kana literally (は -> /ha/).
- cmn: hanzi, read by the ``cmn-latn-pinyin`` voice (see ``espeak.VOICE_ALIASES``), no spaces.
- ar: Modern Standard Arabic with full vowel marks (harakat, shadda, sukun): unvocalised Arabic is
  ambiguous and espeak then guesses vowels.
- hi: Devanagari, including nukta letters (ज़ फ़ ख़ ग़ क़) and nasalisation (ँ ं).

Every vocabulary entry is read by espeak in its own language (no switch to English), which
``tests/test_espeak_synth.py`` checks.

Coverage. Symbols are espeak's PHONEME-event IPA, exactly as ``espeak.synthesize`` times them
(obtained with ``espeak.phonemize``, the same synthesis and events, so there is one symbol convention;
pauses excluded; rendered at 350 wpm, where espeak's phoneme list is the same as at any rate up to
440 wpm but the audio to render is half as long). ``espeak_TextToPhonemes`` would be ten times faster
but is not the same convention: it spells length and stress where the events do not (Arabic /aː/,
Japanese /o̞o̞/ come out of the events as /a/, /o̞/) and splits some phonemes differently.

``phoneme_inventory(language)`` is the set of symbols over a fixed large sample: every vocabulary
entry and phrase, plus ``INVENTORY_SENTENCES`` generated sentences (seed ``INVENTORY_SEED``), so it
also contains the context-dependent variants espeak produces in running speech. It saturates: 150
and 1500 sentences give the same set in every language except Spanish, where only the 1500 reached a
/dʒ/. ``select_for_coverage`` greedily picks sentences from a larger pool, each time the sentence
whose not-yet-covered symbols weigh most (a symbol weighs 1 / its pool frequency, so rare phonemes
go first); once the pool's symbols are all covered a new round starts, so later picks balance
second and third occurrences. Phonemizations are cached in memory per (language, text), so a pool
and the inventory sample are phonemized once per process.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import TypedDict

from stream_avatar.data import espeak

__all__ = [
    "INVENTORY_SEED",
    "INVENTORY_SENTENCES",
    "LANGUAGES",
    "Coverage",
    "coverage_report",
    "phoneme_inventory",
    "phoneme_set",
    "phrases",
    "select_for_coverage",
    "sentences",
    "unreadable",
    "vocabulary",
]

INVENTORY_SEED: int = 1_000_003
INVENTORY_SENTENCES: int = 200
MIN_WORDS, MAX_WORDS = 3, 12
# Phonemizing for coverage renders at this rate: espeak's phoneme list (pauses aside) is the same as at
# 175 wpm (see ``espeak.phonemize``) and the shorter audio makes it about 1.7x faster.
_FAST_RATE_WPM = 350


@dataclass(frozen=True)
class _Lang:
    """One language's material. ``words``/``phrases`` are whitespace-tokenised words (a phrase of k
    tokens counts as k words); ``joiner`` glues tokens in the output ("" for Mandarin)."""

    words: tuple[str, ...]
    phrases: tuple[tuple[str, ...], ...]
    joiner: str
    comma: str  # including the space that follows it, if the script uses one
    stops: tuple[str, str, str]  # statement, question, exclamation
    latin: bool = False  # capitalise the first letter
    inverted: bool = False  # Spanish ¿...? ¡...!


def _lang(
    words: str, phrases: str, joiner: str, comma: str, stops: tuple[str, str, str], **kw: bool
) -> _Lang:
    w = tuple(dict.fromkeys(words.split()))
    p = tuple(dict.fromkeys(tuple(x.split()) for x in phrases.split("|") if x.strip()))
    return _Lang(w, p, joiner, comma, stops, **kw)


_EN = _lang(
    """
    I you he she we they it this that what who where when why how which there here yes no not and or
    but because if so very too also just only again always never often sometimes maybe really
    a the an some many much more most all every each other another one two three four five six seven
    eight nine ten twelve twenty hundred thousand first second last next
    man woman child children boy girl baby mother father brother sister friend family people teacher
    doctor student neighbour king queen
    house home room kitchen garden window door table chair bed floor wall roof street road bridge
    city town village country world school hospital bank shop market church office station airport
    water milk coffee tea juice bread butter cheese rice soup fish meat chicken egg apple orange
    banana sugar salt food breakfast lunch dinner cake chocolate
    book paper pen letter phone computer television radio picture music song movie game ball
    car bus train plane bike boat ship ticket money job work question answer problem idea
    sun moon star sky cloud rain snow wind weather river lake sea mountain island forest tree flower
    grass leaf dog cat bird horse cow sheep mouse fox lion bear
    day night morning evening afternoon today tomorrow yesterday week month year hour minute time
    spring summer autumn winter birthday holiday weekend
    big small little long short tall high low new old young hot cold warm cool good bad great nice
    happy sad angry tired hungry thirsty quick slow early late easy hard clean dirty quiet loud
    beautiful ugly strong weak rich poor cheap expensive heavy light dark bright full empty
    red yellow blue green white black brown pink purple orange grey colour
    go come walk run sit stand sleep wake eat drink cook read write speak talk say tell listen hear
    see look watch know think understand remember forget learn teach buy sell pay give take bring
    send open close start stop begin finish wait find lose keep help play sing dance laugh cry
    swim fly drive ride climb throw catch push pull carry wash choose enjoy join measure treasure
    usually pleasure vision television garage beige boy toy noise voice choice point join enjoy
    tour poor pure sure cure hair chair where care bear fair air year near here clear beer
    thing think thank three thousand mouth north south teeth bath health truth both
    this that those these other mother father weather together brother smooth clothes
    sing song long young strong finger singer morning evening thinking
    judge bridge orange cheese church watch chicken jump jacket ship shoe wash fish sugar nation
    """,
    """
    how are you | thank you very much | good morning | good night | see you later | excuse me |
    I don't know | what time is it | let me think | of course | not at all | nice to meet you |
    happy birthday | that sounds great | where is the station | how much is it | I'm sorry |
    have a nice day | just a moment | we should go home | it's a beautiful day | come with me |
    I would like some water | please open the window | the weather is lovely | take care |
    what do you think | can you help me | I'm looking for the bridge | it is getting dark
    """,
    " ",
    ", ",
    (".", "?", "!"),
    latin=True,
)

_ES = _lang(
    """
    yo tú él ella nosotros ellos usted esto eso aquí allí qué quién dónde cuándo cómo por porque
    sí no y o pero también muy mucho poco siempre nunca ahora hoy mañana ayer todavía ya
    un una el la los las unos uno dos tres cuatro cinco seis siete ocho nueve diez once doce veinte
    cien mil primero último
    hombre mujer niño niña bebé madre padre hermano hermana amigo amiga familia gente maestro médico
    señor señora abuelo abuela hijo hija vecino
    casa cocina jardín ventana puerta mesa silla cama pared calle camino puente ciudad pueblo país
    mundo escuela hospital banco tienda mercado iglesia oficina estación aeropuerto playa
    agua leche café té jugo pan queso arroz sopa pescado carne pollo huevo manzana naranja plátano
    azúcar sal comida desayuno almuerzo cena pastel chocolate paella tortilla
    libro papel carta teléfono ordenador televisión radio foto música canción película juego pelota
    coche autobús tren avión bicicleta barco billete dinero trabajo pregunta respuesta problema idea
    sol luna estrella cielo nube lluvia nieve viento tiempo río lago mar montaña isla bosque árbol
    flor hierba hoja perro gato pájaro caballo vaca oveja ratón zorro león oso
    día noche tarde semana mes año hora minuto primavera verano otoño invierno cumpleaños fiesta
    grande pequeño largo corto alto bajo nuevo viejo joven caliente frío bueno malo bonito feliz
    triste cansado rápido lento fácil difícil limpio sucio tranquilo fuerte débil rico pobre barato
    caro pesado ligero oscuro claro lleno vacío rojo amarillo azul verde blanco negro gris color
    ir venir andar correr sentarse dormir comer beber cocinar leer escribir hablar decir escuchar
    oír ver mirar saber pensar entender recordar olvidar aprender enseñar comprar vender pagar dar
    tomar traer abrir cerrar empezar terminar esperar encontrar perder ayudar jugar cantar bailar
    reír llorar nadar volar conducir subir lavar querer poder tener hacer llamar llegar salir
    voy vas va vamos tengo tiene quiero puedo hago digo sé es son está están hay era fue
    guerra guitarra perro carro ferrocarril rojo ruido reloj jamón jefe gente general ojo joya
    mañana niño año señal compañero español pequeño sueño
    llave lluvia calle caballo pollo yo ayer playa mayo
    cielo cerca zapato azúcar corazón cabeza plaza once doce
    chico chica mucho noche leche ocho coche ducha
    agua guapo antiguo pingüino fuego nuevo bueno huevo
    """,
    """
    buenos días | buenas tardes | buenas noches | muchas gracias | de nada | por favor | lo siento |
    hasta luego | hasta mañana | mucho gusto | no lo sé | qué hora es | cuánto cuesta |
    feliz cumpleaños | qué tal | con permiso | vamos a la playa | hace buen tiempo | tengo hambre |
    me gusta mucho | dónde está la estación | un momento | claro que sí | ten cuidado |
    qué piensas | puedes ayudarme | la cena está lista
    """,
    " ",
    ", ",
    (".", "?", "!"),
    latin=True,
    inverted=True,
)

_FR = _lang(
    """
    je tu il elle nous vous ils elles on ce cela ici là quoi qui où quand comment pourquoi
    oui non et ou mais aussi très beaucoup peu toujours jamais souvent maintenant aujourd'hui
    demain hier encore déjà
    un une le la les des deux trois quatre cinq six sept huit neuf dix onze douze vingt cent mille
    premier dernier
    homme femme enfant garçon fille bébé mère père frère sœur ami amie famille gens professeur
    médecin monsieur madame grand-mère grand-père fils voisin
    maison cuisine jardin fenêtre porte table chaise lit mur rue chemin pont ville village pays
    monde école hôpital banque magasin marché église bureau gare aéroport plage
    eau lait café thé jus pain beurre fromage riz soupe poisson viande poulet œuf pomme orange
    banane sucre sel repas déjeuner dîner gâteau chocolat croissant
    livre papier lettre téléphone ordinateur télévision radio photo musique chanson film jeu ballon
    voiture bus train avion vélo bateau billet argent travail question réponse problème idée
    soleil lune étoile ciel nuage pluie neige vent temps rivière lac mer montagne île forêt arbre
    fleur herbe feuille chien chat oiseau cheval vache mouton souris renard lion ours
    jour nuit matin soir semaine mois an année heure minute printemps été automne hiver anniversaire
    fête
    grand petit long court haut bas nouveau vieux jeune chaud froid bon mauvais beau joli heureux
    triste fatigué rapide lent facile difficile propre sale calme fort faible riche pauvre cher lourd
    léger sombre clair plein vide rouge jaune bleu vert blanc noir gris brun couleur
    aller venir marcher courir asseoir dormir manger boire cuisiner lire écrire parler dire écouter
    entendre voir regarder savoir penser comprendre oublier apprendre acheter vendre payer donner
    prendre apporter ouvrir fermer commencer finir attendre trouver perdre aider jouer chanter danser
    rire pleurer nager voler conduire laver vouloir pouvoir avoir faire appeler arriver partir
    suis es est sommes êtes sont ai as avons ont vais va allons fait dit
    un brun parfum lundi quelqu'un chacun
    huit nuit lui pluie fruit cuisine juillet puis
    montagne campagne champagne espagnol gagner signe
    bain main pain vin train cousin matin jardin plein
    enfant temps vent grand chambre ensemble
    bon non monde pont maison long nombre
    heureux deux bleu peu jeudi vœu
    sœur cœur fleur heure beurre peur jeune
    rouge jour toujours bonjour
    oiseau moi toi trois soir voir froid
    """,
    """
    bonjour | bonsoir | bonne nuit | merci beaucoup | de rien | s'il vous plaît | excusez-moi |
    au revoir | à bientôt | à demain | je ne sais pas | quelle heure est-il | combien ça coûte |
    joyeux anniversaire | ça va bien | il fait beau | j'ai faim | c'est magnifique |
    où est la gare | un instant | bien sûr | fais attention | qu'en penses-tu | peux-tu m'aider |
    le dîner est prêt | allons à la plage
    """,
    " ",
    ", ",
    (".", "?", "!"),
    latin=True,
)

_DE = _lang(
    """
    ich du er sie es wir ihr das dies hier dort was wer wo wann wie warum welche ja nein nicht und
    oder aber auch sehr viel wenig immer nie oft jetzt heute morgen gestern noch schon vielleicht
    ein eine der die den dem zwei drei vier fünf sechs sieben acht neun zehn elf zwölf zwanzig
    hundert tausend erste letzte
    Mann Frau Kind Junge Mädchen Säugling Mutter Vater Bruder Schwester Freund Freundin Familie Leute
    Lehrer Arzt Großmutter Großvater Sohn Tochter Nachbar
    Haus Küche Garten Fenster Tür Tisch Stuhl Bett Wand Straße Weg Brücke Stadt Dorf Land Welt
    Schule Krankenhaus Bank Laden Markt Kirche Büro Bahnhof Flughafen Strand
    Wasser Milch Kaffee Tee Saft Brot Butter Käse Reis Suppe Fisch Fleisch Huhn Ei Apfel Orange
    Banane Zucker Salz Essen Frühstück Mittagessen Abendessen Kuchen Schokolade Brezel Wurst
    Buch Papier Brief Telefon Computer Fernseher Radio Foto Musik Lied Film Spiel Ball
    Auto Bus Zug Flugzeug Fahrrad Schiff Fahrkarte Geld Arbeit Frage Antwort Problem Idee
    Sonne Mond Stern Himmel Wolke Regen Schnee Wind Wetter Fluss See Meer Berg Insel Wald Baum
    Blume Gras Blatt Hund Katze Vogel Pferd Kuh Schaf Maus Fuchs Löwe Bär
    Tag Nacht Morgen Abend Woche Monat Jahr Stunde Minute Zeit Frühling Sommer Herbst Winter
    Geburtstag Fest Wochenende
    groß klein lang kurz hoch niedrig neu alt jung heiß kalt warm gut schlecht schön glücklich
    traurig müde schnell langsam leicht schwer sauber schmutzig ruhig laut stark schwach reich arm
    billig teuer dunkel hell voll leer rot gelb blau grün weiß schwarz grau braun Farbe
    gehen kommen laufen sitzen schlafen essen trinken kochen lesen schreiben sprechen sagen hören
    sehen schauen wissen denken verstehen vergessen lernen lehren kaufen verkaufen bezahlen geben
    nehmen bringen öffnen schließen beginnen warten finden verlieren helfen spielen singen tanzen
    lachen weinen schwimmen fliegen fahren waschen wollen können haben machen rufen ankommen
    bin bist ist sind seid habe hat gehe geht mache macht
    ich mich dich nicht leicht Licht Milch Kirche München Mädchen sprechen
    Buch Nacht acht Bach lachen kochen Tuch Dach
    Pferd Apfel Kopf Topf Pflanze
    Zeit Zug Zimmer zehn Katze Platz jetzt Herz
    Glück für über müde Tür Brücke fünf zurück
    schön hören Öl Vögel können Köln möchte öffnen
    heute Leute Freude neu Euro Häuser
    Schiff schön Fisch Schule Tisch Spiel Stein Straße
    """,
    """
    guten Morgen | guten Tag | guten Abend | gute Nacht | vielen Dank | bitte schön | entschuldigen Sie
    | auf Wiedersehen | bis später | bis morgen | ich weiß nicht | wie spät ist es | was kostet das |
    alles Gute zum Geburtstag | wie geht es dir | das Wetter ist schön | ich habe Hunger |
    wo ist der Bahnhof | einen Moment | natürlich | pass auf | was denkst du | kannst du mir helfen |
    das Essen ist fertig | wir gehen nach Hause
    """,
    " ",
    ", ",
    (".", "?", "!"),
    latin=True,
)

_JA = _lang(
    """
    わたし あなた かれ かのじょ わたしたち みんな これ それ あれ どれ ここ そこ あそこ どこ なに だれ いつ
    どう なぜ どうして いくつ いくら はい いいえ そして でも だから とても すこし たくさん もっと いつも
    ときどき また もう まだ すぐ ちょっと いっしょに
    が を に で と も の から まで より よ ね か わ え や
    いち に さん よん ご ろく なな はち きゅう じゅう ひゃく せん まん ひとつ ふたつ みっつ よっつ いつつ
    ひと おとこ おんな こども あかちゃん ともだち かぞく はは ちち おかあさん おとうさん おにいさん
    おねえさん おとうと いもうと おじいさん おばあさん せんせい がくせい いしゃ けいさつかん
    いえ うち へや だいどころ にわ まど ドア つくえ いす ベッド かべ みち はし まち むら くに せかい
    がっこう びょういん ぎんこう ゆうびんきょく みせ いちば えき くうこう こうえん としょかん ホテル
    みず おちゃ コーヒー ぎゅうにゅう ジュース ごはん パン チーズ スープ さかな にく とりにく たまご
    りんご みかん バナナ さとう しお あさごはん ひるごはん ばんごはん ケーキ チョコレート すし
    ラーメン てんぷら うどん そば おにぎり みそしる ぎょうざ
    ほん かみ てがみ でんわ けいたい コンピューター テレビ ラジオ しゃしん おんがく うた えいが
    ゲーム ボール くるま バス でんしゃ ひこうき じてんしゃ ふね きっぷ おかね しごと しつもん
    こたえ もんだい かんがえ
    たいよう つき ほし そら くも あめ ゆき かぜ てんき かわ みずうみ うみ やま しま もり き はな
    くさ は いぬ ねこ とり うま うし ひつじ ねずみ きつね ライオン くま さる
    ひ よる あさ ひる ゆうがた きょう あした きのう いま まいにち しゅう つき とし じかん ふん びょう
    はる なつ あき ふゆ たんじょうび まつり しゅうまつ やすみ
    おおきい ちいさい ながい みじかい たかい ひくい やすい あたらしい ふるい わかい あつい さむい
    あたたかい すずしい いい わるい きれい うれしい かなしい つかれた はやい おそい かんたん
    むずかしい しずか にぎやか つよい よわい おもい かるい くらい あかるい おいしい たのしい
    あかい あおい きいろい みどり しろい くろい ちゃいろ はいいろ いろ
    いく くる あるく はしる すわる たつ ねる おきる たべる のむ りょうり よむ かく はなす いう きく
    みる しる おもう わかる おぼえる わすれる ならう おしえる かう うる はらう あげる もらう とる
    もつ あける しめる はじめる おわる まつ みつける なくす てつだう あそぶ うたう おどる わらう
    なく およぐ とぶ うんてん あらう ほしい できる する つくる よぶ つく でる
    です でした ます ました ません たい ない
    きょう きゃく しゃしん しゅくだい しょくじ ちゃわん ちゅうい ちょうど にゃあ ひゃく びょうき
    ぴゃく みゃく りょこう ぎゅうにゅう じゃま じゅぎょう じょうず
    きって がっこう ちょっと いっしょ はっぱ まって ざっし きっさてん
    さんぽ しんぶん てんき ぎんこう こんや あんない でんわ ほんや
    パーティー ディスク フォーク ファイル ウェブ チェック ソファ ヴァイオリン
    """,
    """
    おはよう ございます | こんにちわ | こんばんわ | ありがとう ございます | すみません |
    ごめんなさい | いただきます | ごちそうさま でした | おやすみ なさい | いって きます | ただいま |
    おかえり なさい | はじめまして | よろしく おねがい します | おげんき ですか | だいじょうぶ です |
    わかりました | ちょっと まって ください | いくら ですか | えき わ どこ ですか | いま なんじ ですか |
    また あした | きを つけて | おめでとう ございます | そう ですね | いい てんき ですね |
    おなか が すきました | いっしょに いきましょう | ばんごはん が できました
    """,
    " ",
    "、",
    ("。", "？", "！"),
)

_CMN = _lang(
    """
    我 你 他 她 我们 你们 他们 这 那 哪 这里 那里 什么 谁 哪里 什么时候 为什么 怎么 多少 几
    是 不 有 没有 在 和 或者 但是 因为 所以 很 太 非常 也 都 还 又 再 已经 常常 总是 一起 马上
    一 二 三 四 五 六 七 八 九 十 百 千 万 两 第一 最后
    人 男人 女人 孩子 朋友 家人 爸爸 妈妈 哥哥 姐姐 弟弟 妹妹 爷爷 奶奶 儿子 女儿 老师 学生 医生
    邻居 先生 小姐
    家 房间 厨房 花园 窗户 门 桌子 椅子 床 墙 路 街 桥 城市 农村 国家 世界 学校 医院 银行 商店
    市场 饭馆 酒店 图书馆 公园 车站 机场 中国 北京 上海
    水 茶 咖啡 牛奶 果汁 米饭 面条 饺子 包子 面包 鸡蛋 鱼 肉 鸡肉 菜 水果 苹果 香蕉 西瓜 橙子
    糖 盐 早饭 午饭 晚饭 蛋糕 巧克力
    书 纸 信 电话 手机 电脑 电视 收音机 照片 音乐 歌 电影 游戏 球 汽车 公共汽车 火车 飞机
    自行车 船 地铁 票 钱 工作 问题 回答 办法 事情 东西 作业 考试
    太阳 月亮 星星 天 云 雨 雪 风 天气 河 湖 海 山 岛 森林 树 花 草 叶子 狗 猫 鸟 马 牛 羊 老鼠
    狐狸 狮子 熊 猴子 熊猫
    天 晚上 早上 中午 下午 今天 明天 昨天 现在 每天 星期 月 年 小时 分钟 时间 春天 夏天 秋天 冬天
    生日 节日 周末
    大 小 长 短 高 矮 新 旧 年轻 热 冷 暖和 凉快 好 坏 快 慢 远 近 多 少 贵 便宜 漂亮 高兴 难过
    累 饿 渴 容易 难 干净 脏 安静 热闹 重 轻 黑 白 红 黄 蓝 绿 颜色 好吃 好看
    去 来 回 走 跑 坐 站 睡觉 起床 吃 喝 做饭 看 听 说 读 写 知道 认识 觉得 想 记得 忘记 学习 教
    买 卖 给 拿 带 开 关 开始 结束 等 找 丢 帮助 玩 唱歌 跳舞 笑 哭 游泳 飞 开车 洗 要 会 能
    可以 喜欢 爱 住 叫 用 送 打电话 旅游 运动 踢 足球
    知道 吃饭 是 日子 字 次 四 词 丝 纸 迟到 十 热 人 让 容易
    女 绿 去 鱼 雨 学 月 云 远 选 全 军 句子 需要
    二 儿子 耳朵 熊 穷 用 快 坏 黄 床 光 想 两 香 天 边 完 关 春 问 冷 风 等 听 明 六 九 牛 对 回
    水 黑 给 飞 小 要 笑 姐 写 谢谢 月 说 多 左 右 走 后 猪 书 出 租 粗 苏 雀 缺 瓜 花 话 桌 错
    """,
    """
    你 好 | 谢谢 | 不 客气 | 对不起 | 没 关系 | 再见 | 早上 好 | 晚安 | 请问 | 多少 钱 |
    我 不 知道 | 没 问题 | 太 好 了 | 请 坐 | 请 进 | 生日 快乐 | 新年 快乐 | 慢慢 来 | 小心 |
    加油 | 你 吃饭 了 吗 | 今天 天气 很 好 | 我 很 高兴 | 你 叫 什么 名字 | 现在 几 点 |
    火车站 在 哪里 | 我们 一起 去 吧 | 晚饭 做 好 了
    """,
    "",
    "，",
    ("。", "？", "！"),
)

_HI = _lang(
    """
    मैं तुम आप वह हम वे यह ये क्या कौन कहाँ कब क्यों कैसे कितना कौनसा हाँ नहीं और या लेकिन भी तो
    बहुत थोड़ा हमेशा कभी अक्सर अब आज कल परसों अभी फिर यहाँ वहाँ साथ बाद पहले शायद
    से में पर को का की के लिए तक ने
    एक दो तीन चार पाँच छह सात आठ नौ दस बीस सौ हज़ार पहला आख़िरी
    आदमी औरत बच्चा बच्चे लड़का लड़की माँ पिता भाई बहन दोस्त परिवार लोग अध्यापक डॉक्टर छात्र दादी दादा
    बेटा बेटी पड़ोसी राजा रानी
    घर कमरा रसोई बगीचा खिड़की दरवाज़ा मेज़ कुर्सी पलंग दीवार सड़क रास्ता पुल शहर गाँव देश दुनिया
    स्कूल अस्पताल बैंक दुकान बाज़ार मंदिर दफ़्तर स्टेशन हवाई अड्डा भारत दिल्ली मुंबई
    पानी दूध चाय कॉफ़ी रस रोटी मक्खन पनीर चावल दाल सब्ज़ी मछली मांस अंडा सेब संतरा केला आम चीनी
    नमक खाना नाश्ता मिठाई समोसा लड्डू
    किताब कागज़ चिट्ठी फ़ोन कंप्यूटर टीवी रेडियो फ़ोटो संगीत गाना फ़िल्म खेल गेंद
    गाड़ी बस रेलगाड़ी जहाज़ साइकिल नाव टिकट पैसा काम सवाल जवाब समस्या विचार बात चीज़
    सूरज चाँद तारा आसमान बादल बारिश बर्फ़ हवा मौसम नदी झील समुद्र पहाड़ द्वीप जंगल पेड़ फूल घास
    पत्ता कुत्ता बिल्ली चिड़िया घोड़ा गाय भेड़ चूहा शेर भालू हाथी बंदर
    दिन रात सुबह दोपहर शाम हफ़्ता महीना साल घंटा मिनट समय वसंत गर्मी सर्दी जन्मदिन त्योहार दिवाली होली
    बड़ा छोटा लंबा ऊँचा नीचा नया पुराना जवान गरम ठंडा अच्छा बुरा सुंदर खुश उदास थका तेज़ धीरे आसान
    मुश्किल साफ़ गंदा शांत ज़ोर कमज़ोर अमीर ग़रीब सस्ता महँगा भारी हल्का अंधेरा पूरा ख़ाली
    लाल पीला नीला हरा सफ़ेद काला भूरा गुलाबी रंग
    जाना आना चलना दौड़ना बैठना सोना उठना खाना पीना पकाना पढ़ना लिखना बोलना कहना सुनना देखना
    जानना सोचना समझना याद भूलना सीखना सिखाना ख़रीदना बेचना देना लेना लाना खोलना बंद शुरू ख़त्म
    इंतज़ार ढूँढना खोना मदद खेलना गाना नाचना हँसना रोना तैरना उड़ना धोना चाहना सकना करना बनाना
    हूँ है हैं था थी थे जाता जाती जाते आता आती करता करती रहा रही रहे गया गई आया आई किया
    कृपया ऋषि भाषा विशेष शाम शहर धन्यवाद धूप ध्यान झंडा झूठ ठीक ठंडा ढोल पढ़ाई गणेश कारण प्राण
    ख़ुश ग़लत क़लम ज़रूर फ़ौरन
    """,
    """
    नमस्ते | धन्यवाद | माफ़ कीजिए | आप कैसे हैं | मैं ठीक हूँ | फिर मिलेंगे | शुभ रात्रि | कोई बात नहीं |
    बहुत अच्छा | मुझे नहीं पता | यह कितने का है | आपका नाम क्या है | चलो चलते हैं | जन्मदिन मुबारक |
    एक मिनट रुकिए | ज़रूर | ध्यान रखना | आज मौसम अच्छा है | मुझे भूख लगी है | स्टेशन कहाँ है |
    खाना तैयार है | आप क्या सोचते हैं
    """,
    " ",
    ", ",
    ("।", "?", "!"),
)

_AR = _lang(
    """
    أَنَا أَنْتَ أَنْتِ هُوَ هِيَ نَحْنُ هُمْ هَذَا هَذِهِ ذَلِكَ تِلْكَ مَا مَاذَا مَنْ أَيْنَ مَتَى لِمَاذَا كَيْفَ كَمْ
    نَعَمْ لَا لَيْسَ وَ أَوْ لَكِنْ فِي عَلَى مِنْ إِلَى مَعَ عِنْدَ بَعْدَ قَبْلَ فَوْقَ تَحْتَ جِدًّا أَيْضًا الْآنَ
    هُنَا هُنَاكَ دَائِمًا أَحْيَانًا رُبَّمَا
    وَاحِد اِثْنَان ثَلَاثَة أَرْبَعَة خَمْسَة سِتَّة سَبْعَة ثَمَانِيَة تِسْعَة عَشَرَة عِشْرُون مِائَة أَلْف أَوَّل آخِر
    رَجُل اِمْرَأَة طِفْل وَلَد بِنْت أُمّ أَب أَخ أُخْت صَدِيق عَائِلَة نَاس مُعَلِّم طَبِيب طَالِب جَدّ جَدَّة
    اِبْن جَار مَلِك
    بَيْت غُرْفَة مَطْبَخ حَدِيقَة نَافِذَة بَاب طَاوِلَة كُرْسِيّ سَرِير حَائِط شَارِع طَرِيق جِسْر مَدِينَة
    قَرْيَة بَلَد عَالَم مَدْرَسَة مُسْتَشْفَى بَنْك دُكَّان سُوق مَسْجِد مَكْتَب مَحَطَّة مَطَار شَاطِئ
    مَاء حَلِيب قَهْوَة شَاي عَصِير خُبْز زُبْدَة جُبْن أَرُزّ حَسَاء سَمَك لَحْم دَجَاج بَيْض تُفَّاح
    بُرْتُقَال مَوْز سُكَّر مِلْح طَعَام فُطُور غَدَاء عَشَاء كَعْك تَمْر
    كِتَاب وَرَقَة رِسَالَة هَاتِف حَاسُوب تِلْفَاز رَادِيُو صُورَة مُوسِيقَى أُغْنِيَة فِيلْم لُعْبَة كُرَة
    سَيَّارَة حَافِلَة قِطَار طَائِرَة دَرَّاجَة سَفِينَة تَذْكِرَة مَال عَمَل سُؤَال جَوَاب مُشْكِلَة فِكْرَة
    شَمْس قَمَر نَجْم سَمَاء غَيْم مَطَر ثَلْج رِيح طَقْس نَهْر بُحَيْرَة بَحْر جَبَل جَزِيرَة غَابَة شَجَرَة
    زَهْرَة عُشْب وَرَق كَلْب قِطَّة طَائِر حِصَان بَقَرَة خَرُوف فَأْر ثَعْلَب أَسَد دُبّ جَمَل
    يَوْم لَيْل صَبَاح ظُهْر مَسَاء أُسْبُوع شَهْر سَنَة سَاعَة دَقِيقَة وَقْت الْيَوْمَ غَدًا أَمْسِ رَبِيع صَيْف
    خَرِيف شِتَاء عِيد
    كَبِير صَغِير طَوِيل قَصِير عَالٍ جَدِيد قَدِيم شَابّ حَارّ بَارِد دَافِئ جَيِّد سَيِّئ جَمِيل سَعِيد حَزِين
    تَعْبَان سَرِيع بَطِيء سَهْل صَعْب نَظِيف وَسِخ هَادِئ قَوِيّ ضَعِيف غَنِيّ فَقِير رَخِيص ثَقِيل خَفِيف
    مُظْلِم مَلِيء فَارِغ لَذِيذ أَحْمَر أَصْفَر أَزْرَق أَخْضَر أَبْيَض أَسْوَد بُنِّيّ لَوْن
    ذَهَبَ جَاءَ مَشَى جَرَى جَلَسَ وَقَفَ نَامَ أَكَلَ شَرِبَ طَبَخَ قَرَأَ كَتَبَ قَالَ سَمِعَ رَأَى عَرَفَ فَكَّرَ
    فَهِمَ تَذَكَّرَ نَسِيَ تَعَلَّمَ عَلَّمَ اِشْتَرَى بَاعَ دَفَعَ أَعْطَى أَخَذَ فَتَحَ أَغْلَقَ بَدَأَ اِنْتَظَرَ وَجَدَ
    سَاعَدَ لَعِبَ غَنَّى ضَحِكَ بَكَى سَبَحَ طَارَ غَسَلَ أَرَادَ أَحَبَّ سَافَرَ رَجَعَ خَرَجَ دَخَلَ
    يَذْهَبُ يَأْكُلُ يَشْرَبُ يَكْتُبُ يَقْرَأُ أُحِبُّ أُرِيدُ نَعْرِفُ تَعَالَ
    صَوْت ضَوْء ظَلَام ضَيْف مَرِيض أَرْض وَسَط خَطّ حَظّ عَيْن غَدًا حُبّ قَلْب ذَهَب ثَوْب ظَرْف صَيْد
    """,
    """
    مَرْحَبًا | شُكْرًا جَزِيلًا | عَفْوًا | مِنْ فَضْلِكَ | صَبَاحُ الْخَيْرِ | مَسَاءُ الْخَيْرِ | كَيْفَ حَالُكَ |
    أَنَا بِخَيْرٍ | مَعَ السَّلَامَةِ | إِلَى اللِّقَاءِ | أَهْلًا وَسَهْلًا | السَّلَامُ عَلَيْكُمْ | لَا أَعْرِفُ |
    مَا اسْمُكَ | كَمِ السَّاعَةُ | تَفَضَّلْ | إِنْ شَاءَ اللَّهُ | الْحَمْدُ لِلَّهِ | لَا بَأْسَ |
    عِيدُ مِيلَادٍ سَعِيدٌ | الطَّقْسُ جَمِيلٌ الْيَوْمَ | أَنَا جَائِعٌ | أَيْنَ الْمَحَطَّةُ | الْعَشَاءُ جَاهِزٌ
    """,
    " ",
    "، ",
    (".", "؟", "!"),
)

_LANGS: dict[str, _Lang] = {
    "en": _EN,
    "es": _ES,
    "fr": _FR,
    "de": _DE,
    "ja": _JA,
    "cmn": _CMN,
    "hi": _HI,
    "ar": _AR,
}
LANGUAGES: tuple[str, ...] = tuple(_LANGS)


def _material(language: str) -> _Lang:
    try:
        return _LANGS[language]
    except KeyError:
        raise ValueError(
            f"no text material for language {language!r}; available: {', '.join(LANGUAGES)}"
        ) from None


def vocabulary(language: str) -> tuple[str, ...]:
    """The language's single words (in its script, as ``sentences`` uses them)."""
    return _material(language).words


def phrases(language: str) -> tuple[str, ...]:
    """The language's set phrases, written as they appear in sentences."""
    lang = _material(language)
    return tuple(lang.joiner.join(p) for p in lang.phrases)


def _sentence(lang: _Lang, rng: random.Random, by_length: dict[int, list[tuple[str, ...]]]) -> str:
    target = rng.randint(MIN_WORDS, MAX_WORDS)
    chunks: list[tuple[str, ...]] = []
    count = 0
    while count < target:
        left = target - count
        if rng.random() < 0.3:
            fits = [p for k, group in by_length.items() if k <= left for p in group]
            if fits:
                chunks.append(rng.choice(fits))
                count += len(chunks[-1])
                continue
        k = min(left, rng.randint(1, 3))
        chunks.append(tuple(rng.choice(lang.words) for _ in range(k)))
        count += k
    # Commas between some chunks give espeak clause boundaries (pauses, phrase-final intonation).
    text = lang.joiner.join(chunks[0])
    for chunk in chunks[1:]:
        text += (lang.comma if rng.random() < 0.3 else lang.joiner) + lang.joiner.join(chunk)
    kind = rng.choices((0, 1, 2), weights=(0.7, 0.18, 0.12))[0]
    if lang.latin:
        text = text[0].upper() + text[1:]
    if lang.inverted and kind:
        text = ("¿" if kind == 1 else "¡") + text
    return text + lang.stops[kind]


def sentences(language: str, n: int, seed: int = 0) -> list[str]:
    """``n`` pseudo-sentences of 3-12 words in ``language`` (one of ``LANGUAGES``), deterministic in seed.

    Each is a random mix of set phrases and 1-3-word runs of vocabulary, some joined by commas, ended by
    a full stop (70 %), question mark (18 %) or exclamation mark (12 %) in the script's own punctuation.
    The list for a smaller ``n`` is a prefix of the list for a larger one (same seed).
    """
    lang = _material(language)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"{language}/{seed}")
    by_length: dict[int, list[tuple[str, ...]]] = {}
    for p in lang.phrases:
        by_length.setdefault(len(p), []).append(p)
    return [_sentence(lang, rng, by_length) for _ in range(n)]


# --------------------------------------------------------------------------------------- coverage


@lru_cache(maxsize=100_000)
def _phonemized(language: str, text: str) -> tuple[frozenset[str], tuple[str, ...]]:
    symbols, switched = espeak.phonemize(text, language, rate_wpm=_FAST_RATE_WPM)
    return frozenset(s for s in symbols if s != espeak.PAUSE), switched


def phoneme_set(language: str, text: str) -> frozenset[str]:
    """The IPA symbols (pauses excluded) espeak's ``language`` voice times for ``text``; cached."""
    return _phonemized(language, text)[0]


def _inventory_sample(language: str) -> list[str]:
    lang = _material(language)
    words = list(lang.words)
    # Vocabulary read as comma-separated lists of 12, so every word is spoken at least once.
    lists = [lang.comma.join(words[i : i + 12]) + lang.stops[0] for i in range(0, len(words), 12)]
    return lists + list(phrases(language)) + sentences(language, INVENTORY_SENTENCES, INVENTORY_SEED)


@cache
def phoneme_inventory(language: str) -> frozenset[str]:
    """The set of IPA phoneme symbols espeak-ng produces for ``language`` (pauses excluded).

    Defined empirically, over every vocabulary word and phrase plus ``INVENTORY_SENTENCES`` generated
    sentences (a fixed seed), read by the same synthesis events that ``espeak.synthesize`` times; it
    thus includes context variants of running speech. Computed once per process (about a second).
    """
    out: set[str] = set()
    for text in _inventory_sample(language):
        out |= phoneme_set(language, text)
    return frozenset(out)


def unreadable(language: str) -> list[tuple[str, tuple[str, ...]]]:
    """Texts of the inventory sample for which espeak switched to another language, with those languages.

    Empty for the shipped vocabularies; a non-empty result means a word espeak cannot read in the
    voice's own language (Latin letters in Mandarin, kanji in Japanese, a loanword it treats as English).
    """
    out: list[tuple[str, tuple[str, ...]]] = []
    for text in _inventory_sample(language):
        switched = _phonemized(language, text)[1]
        if switched:
            out.append((text, switched))
    return out


def _greedy(sets: Sequence[frozenset[str]], n: int, weight: dict[str, float]) -> list[int]:
    """Lazy greedy weighted set cover in rounds: each round covers every symbol once more.

    Gains are float sums, so they are summed in sorted symbol order: summing in set order (which
    follows the per-process string hash seed) changes the last bits, hence tie-breaks, hence the
    chosen sentences from one process to the next.
    """

    def gain_of(symbols: Iterable[str]) -> float:
        return math.fsum(weight[s] for s in sorted(symbols))

    chosen: list[int] = []
    taken: set[int] = set()
    while len(chosen) < n:
        covered: set[str] = set()
        heap = [(-gain_of(st), i) for i, st in enumerate(sets) if i not in taken]
        heapq.heapify(heap)
        progressed = False
        while heap and len(chosen) < n:
            _, i = heapq.heappop(heap)
            gain = gain_of(sets[i] - covered)
            if gain <= 0.0:
                continue
            if heap and gain < -heap[0][0] - 1e-12:
                heapq.heappush(heap, (-gain, i))  # stale bound: re-queue with its true gain
                continue
            chosen.append(i)
            taken.add(i)
            covered |= sets[i]
            progressed = True
        if not progressed:
            break
    return chosen


def select_for_coverage(language: str, n: int, seed: int = 0, *, pool_size: int | None = None) -> list[str]:
    """``n`` sentences chosen from ``pool_size`` (default ``3 * n``) generated ones for phoneme coverage.

    Greedy: repeatedly take the sentence whose not-yet-covered symbols weigh most, a symbol weighing
    1 / (number of pool sentences containing it), so sentences bringing rare phonemes go first. When
    everything the pool offers is covered, a new round starts (second occurrences, and so on); if the
    pool runs out of new symbols the rest is filled with pool sentences in a seeded random order.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    size = max(n, pool_size if pool_size is not None else 3 * n)
    pool = list(dict.fromkeys(sentences(language, size, seed)))
    sets = [phoneme_set(language, text) for text in pool]
    freq = Counter(s for st in sets for s in st)
    weight = {s: 1.0 / c for s, c in freq.items()}
    order = _greedy(sets, n, weight)
    if len(order) < n:
        picked = set(order)
        rest = [i for i in range(len(pool)) if i not in picked]
        random.Random(f"{language}/{seed}/fill").shuffle(rest)
        order += rest[: n - len(order)]
    return [pool[i] for i in order]


class Coverage(TypedDict):
    """One language's line of ``coverage_report``."""

    phonemes: int  # size of phoneme_inventory(language)
    covered: int  # inventory symbols present in the selected sentences
    fraction: float  # covered / phonemes
    sentences: int  # number of selected sentences
    missing: list[str]  # inventory symbols not covered, sorted


def coverage_report(
    languages: Iterable[str] = LANGUAGES, n: int = 200, seed: int = 0, *, pool_size: int | None = None
) -> dict[str, Coverage]:
    """Per language: how much of ``phoneme_inventory`` ``select_for_coverage(language, n, seed)`` covers."""
    report: dict[str, Coverage] = {}
    for language in languages:
        inventory = phoneme_inventory(language)
        chosen = select_for_coverage(language, n, seed, pool_size=pool_size)
        seen: set[str] = set()
        for text in chosen:
            seen |= phoneme_set(language, text)
        covered = inventory & seen
        report[language] = Coverage(
            phonemes=len(inventory),
            covered=len(covered),
            fraction=len(covered) / len(inventory) if inventory else 0.0,
            sentences=len(chosen),
            missing=sorted(inventory - seen),
        )
    return report
