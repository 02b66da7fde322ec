//! Caption cleaning, the text preprocessing of the official `T5Embedder` (LlamaGen's
//! `language/t5.py`, inherited from DeepFloyd IF / PixArt): the prompt is lower-cased, stripped
//! of URLs, HTML, @names, CJK, file names, shop boilerplate and stray punctuation, with dashes,
//! quotes and spaces normalised — and the whole cleaning is applied **twice**, as the official
//! code does, so that prompts reach T5 exactly as the training captions did.
//!
//! Differences, all at the fringes: the `ftfy.fix_text` step is approximated (NFC, curly
//! quotes, full-width forms, ligatures and control characters are fixed; mojibake repair is
//! not), HTML is reduced to its text by removing tags and decoding the common entities
//! (BeautifulSoup's parser is not reproduced), and the URL rule's `(?!@)` look-ahead keeps a
//! match that is directly followed by `@` instead of backtracking into a shorter one.

use std::sync::LazyLock;

use regex::{Captures, Regex};

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("valid caption-cleaning pattern")
}

/// One substitution rule: every match of `pattern` becomes `with` (`$1` refers to a group).
struct Rule {
    pattern: Regex,
    with: &'static str,
}

fn rules(list: &[(&str, &'static str)]) -> Vec<Rule> {
    list.iter()
        .map(|&(p, with)| Rule {
            pattern: re(p),
            with,
        })
        .collect()
}

fn apply(rules: &[Rule], mut text: String) -> String {
    for r in rules {
        if r.pattern.is_match(&text) {
            text = r.pattern.replace_all(&text, r.with).into_owned();
        }
    }
    text
}

static URLS: LazyLock<[Regex; 2]> = LazyLock::new(|| {
    let tail = r"|[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b/?)";
    [
        re(&format!(r"\b(?:https?:(?:/{{1,3}}|[a-zA-Z0-9%]){tail}")),
        re(&format!(r"\b(?:www:(?:/{{1,3}}|[a-zA-Z0-9%]){tail}")),
    ]
});

static HTML_TAG: LazyLock<Regex> = LazyLock::new(|| re(r"(?s)<!--.*?-->|</?[a-zA-Z!][^<>]*>"));

/// Rules between the HTML step and the dash/underscore split.
static EARLY: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    rules(&[
        // @nicknames
        (r"@[\w\d]+\b", ""),
        // CJK strokes, katakana extensions, enclosed CJK, CJK compatibility, CJK ideographs
        // (extension A and unified), Yijing hexagrams.
        (
            r"[\x{31c0}-\x{31ef}\x{31f0}-\x{31ff}\x{3200}-\x{32ff}\x{3300}-\x{33ff}\x{3400}-\x{4dbf}\x{4dc0}-\x{4dff}\x{4e00}-\x{9fff}]+",
            "",
        ),
        // every kind of dash → "-"
        (
            r"[\x{2d}\x{58a}\x{5be}\x{1400}\x{1806}\x{2010}-\x{2015}\x{2e17}\x{2e1a}\x{2e3a}\x{2e3b}\x{2e40}\x{301c}\x{3030}\x{30a0}\x{fe31}\x{fe32}\x{fe58}\x{fe63}\x{ff0d}]+",
            "-",
        ),
        // quotes to one standard
        ("[`´«»“”¨]", "\""),
        ("[‘’]", "'"),
        // &quot; and &amp left over
        ("&quot;?", ""),
        ("&amp", ""),
        // IP addresses
        (r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),
        // article ids at the end
        (r"\d:\d\d\s+$", ""),
        // literal "\n"
        (r"\\n", " "),
        // "#123", "#12345…", "123456…"
        (r"#\d{1,3}\b", ""),
        (r"#\d{5,}\b", ""),
        (r"\b\d{6,}\b", ""),
        // file names
        (r"\S+\.(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)", ""),
        // repeated quotes and dots
        (r#"["']{2,}"#, "\""),
        (r"\.{2,}", " "),
        // runs of odd punctuation: ***SALE***, #tag, (…), [...], {…}, |, \, /
        (r"[#®•©™&@·º½¾¿¡§~)(\]\[}{|\\/*]+", " "),
        // " . "
        (r"\s+\.\s+", " "),
    ])
});

static DASHES: LazyLock<Regex> = LazyLock::new(|| re(r"[-_]"));

/// Rules after the basic clean.
static LATE: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    rules(&[
        // product codes: jc6640, jc6640vc, 6640vc231
        (r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""),
        (r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""),
        (r"\b\d+[a-zA-Z]+\d+\b", ""),
        // shop boilerplate
        (r"(worldwide\s+)?(free\s+)?shipping", ""),
        (r"(free\s)?download(\sfree)?", ""),
        (r"\bclick\b\s(?:for|on)\s\w+", ""),
        (
            r"\b(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)(\simage[s]?)?",
            "",
        ),
        (r"\bpage\s+\d+\b", ""),
        // j2d1a2a…
        (r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),
        // sizes: 1920x1080, 3.5×2
        (r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),
        (r"\b\s+:\s+", ": "),
        // a space after punctuation glued to the next word
        (r"(\D[,./])\b", "$1 "),
        (r"\s+", " "),
        // surrounding quotes, leading / trailing stray punctuation, ".hidden" words
        (r#"^["']([\w\W]+)["']$"#, "$1"),
        (r"^['_,\-:;]", ""),
        (r"['_,\-:+]$", ""),
        (r"^\.\S+$", ""),
    ])
});

/// `urllib.parse.unquote_plus`: `+` is a space, `%XX` a byte; invalid UTF-8 becomes U+FFFD.
fn unquote_plus(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes `&name;`, `&#N;` and `&#xH;` entities (the common named ones; `&amp`, `&lt`,
/// `&gt`, `&quot` also without the semicolon, as `html.unescape` does).
fn unescape_html(text: &str) -> String {
    static ENTITY: LazyLock<Regex> =
        LazyLock::new(|| re(r"&(?:#([0-9]{1,7});?|#[xX]([0-9a-fA-F]{1,6});?|([a-zA-Z]+[0-9]?);?)"));
    if !text.contains('&') {
        return text.to_string();
    }
    ENTITY
        .replace_all(text, |c: &Captures| {
            let whole = c.get(0).map_or("", |m| m.as_str());
            let code = if let Some(d) = c.get(1) {
                d.as_str().parse::<u32>().ok()
            } else if let Some(h) = c.get(2) {
                u32::from_str_radix(h.as_str(), 16).ok()
            } else {
                None
            };
            if let Some(code) = code {
                return char::from_u32(code)
                    .filter(|&ch| ch != '\0')
                    .unwrap_or('\u{fffd}')
                    .to_string();
            }
            let name = c.get(3).map_or("", |m| m.as_str());
            let with_semicolon = whole.ends_with(';');
            let decoded = match name {
                "amp" => "&",
                "lt" => "<",
                "gt" => ">",
                "quot" => "\"",
                "apos" if with_semicolon => "'",
                "nbsp" if with_semicolon => "\u{a0}",
                "copy" if with_semicolon => "©",
                "reg" if with_semicolon => "®",
                "trade" if with_semicolon => "™",
                "hellip" if with_semicolon => "…",
                "mdash" if with_semicolon => "—",
                "ndash" if with_semicolon => "–",
                "lsquo" if with_semicolon => "‘",
                "rsquo" if with_semicolon => "’",
                "ldquo" if with_semicolon => "“",
                "rdquo" if with_semicolon => "”",
                "laquo" if with_semicolon => "«",
                "raquo" if with_semicolon => "»",
                "times" if with_semicolon => "×",
                "deg" if with_semicolon => "°",
                _ => return whole.to_string(),
            };
            decoded.to_string()
        })
        .into_owned()
}

/// HTML to its text: comments and tags removed, entities decoded.
fn html_text(text: &str) -> String {
    let stripped = if text.contains('<') {
        HTML_TAG.replace_all(text, "").into_owned()
    } else {
        text.to_string()
    };
    unescape_html(&stripped)
}

/// The parts of `ftfy.fix_text` that matter for prompts: NFC, straight quotes, half-width
/// forms of full-width ASCII, Latin ligatures split, control characters dropped.
fn fix_text(text: &str) -> String {
    let mut n = tokenizers::NormalizedString::from(text);
    n.nfc();
    let mut out = String::with_capacity(text.len());
    for ch in n.get().chars() {
        match ch {
            '\u{2018}' | '\u{2019}' | '\u{201a}' | '\u{201b}' => out.push('\''),
            '\u{201c}' | '\u{201d}' | '\u{201e}' | '\u{201f}' => out.push('"'),
            '\u{ff01}'..='\u{ff5e}' => {
                out.push(char::from_u32(ch as u32 - 0xfee0).expect("ASCII"));
            }
            '\u{3000}' => out.push(' '),
            '\u{fb00}' => out.push_str("ff"),
            '\u{fb01}' => out.push_str("fi"),
            '\u{fb02}' => out.push_str("fl"),
            '\u{fb03}' => out.push_str("ffi"),
            '\u{fb04}' => out.push_str("ffl"),
            '\u{fb05}' | '\u{fb06}' => out.push_str("st"),
            '\r' => {}
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// `basic_clean`: fix the text, unescape HTML twice, strip.
fn basic_clean(text: &str) -> String {
    let text = fix_text(text);
    let text = unescape_html(&unescape_html(&text));
    text.trim().to_string()
}

/// One pass of the official `clean_caption`.
pub fn clean_caption(caption: &str) -> String {
    let mut c = unquote_plus(caption).trim().to_lowercase();
    c = c.replace("<person>", "person");
    for url in URLS.iter() {
        c = url
            .replace_all(&c.clone(), |caps: &Captures| {
                let m = caps.get(0).expect("match");
                // The official pattern ends with (?!@): a match right before '@' is no URL.
                if c[m.end()..].starts_with('@') {
                    m.as_str().to_string()
                } else {
                    String::new()
                }
            })
            .into_owned();
    }
    c = html_text(&c);
    c = apply(&EARLY, c);
    // this-is-my-cute-cat / this_is_my_cute_cat
    if DASHES.find_iter(&c).count() > 3 {
        c = DASHES.replace_all(&c, " ").into_owned();
    }
    c = basic_clean(&c);
    c = apply(&LATE, c);
    c.trim().to_string()
}

/// The official `text_preprocessing`: [`clean_caption`] applied twice.
pub fn preprocess_prompt(prompt: &str) -> String {
    clean_caption(&clean_caption(prompt))
}

/// What the official code does with cleaning turned off: lower-case and strip.
pub fn lower_strip(prompt: &str) -> String {
    prompt.to_lowercase().trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prompts and what the official `clean_caption` (twice, with ftfy 6 and BeautifulSoup 4)
    /// makes of them: plain text, URLs, HTML, @names, percent escapes, unicode punctuation,
    /// full-width forms, ligatures, CJK, shop boilerplate, product codes, sizes, file names,
    /// runs of punctuation, dash-joined words, IP addresses, e-mail addresses, edge punctuation.
    const OFFICIAL: &[(&str, &str)] = &[
        (
            "  A Photo of a Corgi on the Beach  ",
            "a photo of a corgi on the beach",
        ),
        ("a cat, sitting on a mat.", "a cat, sitting on a mat."),
        (
            "a red fox https://example.com/fox.html in snow",
            "a red fox html in snow",
        ),
        ("see www.shop.com now", "see now"),
        (
            "<p>a <b>bold</b> cat</p> &amp; friends",
            "a bold cat friends",
        ),
        ("photo by @john_doe99 of a lake", "photo by of a lake"),
        ("a+cat%20on+a+mat", "a cat on a mat"),
        ("a <person> walking", "a person walking"),
        ("“Quoted” cat", "\"quoted\" cat"),
        ("it’s a dog", "it's a dog"),
        ("red—blue", "red-blue"),
        ("ＦＵＬＬ width", "full width"),
        ("a ﬁne day", "a fine day"),
        ("猫 a cat 猫", "a cat"),
        ("Blue Dress jc6640 free shipping", "blue dress"),
        ("wallpaper 1920x1080 hd", "wallpaper hd"),
        ("image123456789 of a tree", "image123456789 of a tree"),
        ("cat.jpg a cat", "a cat"),
        ("***SALE*** shoes", "sale shoes"),
        ("this-is-my-cute-cat", "this is my cute cat"),
        ("a-b test", "a-b test"),
        ("wait... what", "wait what"),
        ("server 192.168.0.1 room", "server room"),
        ("'a quoted prompt'", "a quoted prompt"),
        ("-leading dash", "leading dash"),
        ("trailing comma,", "trailing comma"),
        ("one,two", "one, two"),
        ("", ""),
        (
            "A RED Cat on the mat!!! https://example.com",
            "a red cat on the mat!!!",
        ),
        ("mail john.doe@gmail.com now", "mail john. doe now"),
        ("café crème 3:45 ", "café crème 3:45"),
        ("size 12345678 #12 #123456", "size"),
    ];

    #[test]
    fn cleaning_matches_the_official_examples() {
        let mut wrong = Vec::new();
        for &(input, expected) in OFFICIAL {
            let got = preprocess_prompt(input);
            if got != expected {
                wrong.push(format!("{input:?}: got {got:?}, expected {expected:?}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn without_cleaning_only_lower_case_and_strip() {
        assert_eq!(lower_strip("  Keep THIS #1  "), "keep this #1");
    }

    #[test]
    fn entities_and_percent_escapes() {
        assert_eq!(
            unescape_html("&lt;b&gt; &#65;&#x42; &copy; &unknown;"),
            "<b> AB © &unknown;"
        );
        assert_eq!(unquote_plus("100%25+sure%"), "100% sure%");
        assert_eq!(unquote_plus("%E2%9C%93"), "✓");
    }
}
