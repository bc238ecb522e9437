//! Chat-like message text built from a word list.
//!
//! The vocabulary is small and skewed (common words are drawn far more often) so that
//! the text compresses like real chat (a few times, not 50×), and the lengths run from
//! one-word replies to paragraphs of a few hundred characters.

use rand::Rng;

/// Words ordered roughly by how often people type them; [`pick_word`] favours the front.
#[rustfmt::skip]
const WORDS: &[&str] = &[
    "i", "you", "the", "to", "a", "and", "it", "is", "that", "we", "my", "for", "in", "of",
    "me", "so", "be", "have", "just", "not", "on", "do", "are", "this", "will", "can",
    "what", "at", "but", "was", "with", "get", "go", "if", "your", "know", "all", "now",
    "up", "no", "yes", "like", "think", "it's", "i'm", "ok", "there", "they", "good",
    "out", "time", "one", "how", "see", "want", "about", "going", "don't", "when", "he",
    "she", "them", "home", "today", "tomorrow", "tonight", "later", "back", "come", "still",
    "really", "then", "too", "got", "need", "maybe", "did", "would", "could", "should",
    "here", "yeah", "thanks", "love", "sorry", "right", "some", "more", "again", "work",
    "day", "make", "take", "let", "sure", "well", "call", "tell", "said", "say", "look",
    "much", "from", "been", "had", "were", "who", "why", "where", "which", "their", "our",
    "us", "him", "her", "his", "an", "or", "as", "by", "any", "only", "also", "very",
    "because", "after", "before", "over", "into", "than", "other", "people", "first",
    "last", "next", "week", "weekend", "morning", "evening", "night", "dinner", "lunch",
    "breakfast", "coffee", "food", "pizza", "beer", "wine", "party", "birthday", "gift",
    "car", "bus", "train", "flight", "airport", "station", "traffic", "late", "early",
    "soon", "already", "yet", "never", "always", "sometimes", "probably", "definitely",
    "actually", "literally", "basically", "honestly", "pretty", "little", "big", "nice",
    "great", "awesome", "amazing", "funny", "weird", "crazy", "tired", "sick", "busy",
    "free", "ready", "happy", "sad", "excited", "worried", "fine", "okay", "cool", "hot",
    "cold", "rain", "sun", "weather", "beach", "park", "walk", "run", "gym", "game",
    "match", "movie", "show", "episode", "series", "song", "music", "concert", "ticket",
    "tickets", "money", "pay", "paid", "price", "cheap", "expensive", "buy", "bought",
    "shop", "store", "supermarket", "milk", "bread", "eggs", "cheese", "chicken", "rice",
    "pasta", "salad", "cake", "chocolate", "kids", "baby", "school", "teacher", "class",
    "homework", "exam", "office", "meeting", "boss", "project", "deadline", "email",
    "phone", "message", "photo", "photos", "video", "link", "address", "location", "map",
    "mum", "mom", "dad", "sister", "brother", "grandma", "friend", "friends", "family",
    "house", "flat", "room", "kitchen", "door", "keys", "dog", "cat", "doctor",
    "appointment", "hospital", "pharmacy", "holiday", "trip", "hotel", "booking", "plan",
    "plans", "idea", "question", "problem", "news", "story", "picture", "wait", "waiting",
    "leave", "leaving", "arrive", "arrived", "bring", "forgot", "remember", "check",
    "send", "sent", "try", "trying", "thought", "feel", "feeling", "hope", "mean", "guess",
    "hear", "heard", "talk", "talking", "meet", "meeting", "start", "finish", "finished",
    "open", "closed", "help", "use", "find", "found", "lost", "watch", "watched", "read",
    "sleep", "slept", "eat", "ate", "drink", "cook", "cooking", "clean", "drive", "pick",
    "drop", "fix", "move", "stay", "play", "win", "won", "lose", "change", "cancel",
    "minutes", "hour", "hours", "days", "month", "year", "o'clock", "half", "quarter",
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
];

/// Canned one-liners that make up a large share of real chat traffic.
#[rustfmt::skip]
const SHORT_REPLIES: &[&str] = &[
    "ok", "Ok", "OK!", "okay", "k", "yes", "Yes!", "yeah", "yep", "no", "nope", "lol",
    "haha", "hahaha", "Haha yes", "thanks", "Thanks!", "thank you", "thx", "sure",
    "Sure!", "on my way", "omw", "be there in 5", "coming", "almost there", "np",
    "no worries", "good night", "Good morning!", "gn", "see you", "see you soon",
    "love you", "miss you", "call me", "can't talk now", "in a meeting", "what?", "wow",
    "nice!", "cool", "great", "perfect", "sounds good", "done", "where are you?",
    "What time?", "how are you?", "I'm fine", "same", "me too", "true", "exactly",
    "oh no", "omg", "really?", "why?", "idk", "brb", "later", "tomorrow?", "tonight?",
];

/// Stock phrases, most common first; they make up about half of all words typed.
#[rustfmt::skip]
const PHRASES: &[&str] = &[
    "i don't know", "see you later", "let me know", "are you coming", "on my way",
    "i'll be there in", "what time", "see you tomorrow", "how are you", "i think so",
    "no problem", "thank you so much", "that's great", "sounds good", "can you",
    "do you want to", "i'm at home", "just got home", "are you ok", "i'm not sure",
    "what do you think", "we should", "at the station", "i'll call you", "call me when",
    "don't forget", "did you see", "i have to", "i need to", "can't wait",
    "it was so", "how was your day", "good morning", "good night", "have a nice day",
    "happy birthday", "on the way", "in 10 minutes", "in five minutes", "running late",
    "i'm so tired", "too much work", "after work", "before dinner", "for dinner",
    "this weekend", "next week", "last night", "this morning", "tomorrow morning",
    "i forgot", "i'll send you", "send me the", "the address", "the photos", "the link",
    "pick up the kids", "from school", "at the supermarket", "do we need", "anything else",
    "i'm going to", "we're going to", "are you free", "what about", "let's meet at",
    "in front of", "near the", "at the office", "in the car", "on the train",
    "at the airport", "the flight is", "is delayed", "it's raining", "so hot today",
    "i love it", "miss you", "love you too", "me too", "no way", "oh my god",
    "that's so funny", "i can't believe", "it's fine", "don't worry", "take care",
    "get well soon", "feel better", "how much", "i paid", "you owe me", "split the bill",
    "i'll bring", "can you bring", "who is coming", "how many people", "the table",
    "the meeting", "i'm in a meeting", "call you back", "talk later", "one sec",
];

/// A few emoji, as real chats are sprinkled with them.
#[rustfmt::skip]
const EMOJI: &[&str] = &[
    "😂", "❤️", "👍", "🙏", "😊", "😍", "🤣", "😭", "😘", "🥰", "👌", "🎉", "😅", "🤔",
    "😎", "🙈", "🔥", "💪", "😢", "👏", "🥳", "😴", "🤷", "✅", "☕", "🍕", "🍻",
];

/// Names that turn up in messages, captions and group subjects.
#[rustfmt::skip]
pub(crate) const NAMES: &[&str] = &[
    "Anna", "Ben", "Carla", "David", "Emma", "Felix", "Grace", "Hugo", "Ines", "Jonas",
    "Kim", "Leo", "Mia", "Noah", "Olivia", "Paul", "Rosa", "Sam", "Tom", "Vera", "Yusuf",
    "Zoe", "Maria", "Lukas", "Sofia", "Elias", "Lena", "Max", "Nina", "Omar",
];

/// Group names, as people name their groups.
#[rustfmt::skip]
pub(crate) const GROUP_SUBJECTS: &[&str] = &[
    "Family", "Family 🏡", "Uni friends", "Football Tuesday ⚽", "Book club",
    "Neighbours", "Work team", "Project X", "Birthday surprise 🎂", "Flatmates",
    "Parents class 3b", "Climbing crew", "Wedding 2026 💍", "Ski trip", "Running club",
    "Cousins", "Old school", "Band practice", "Board games night", "Holiday planning",
    "Choir", "Garden share", "Dev chat", "Photography", "Cooking 🍝",
];

/// Picks a word with a strongly skewed (Zipf-like) preference for the front of [`WORDS`].
fn pick_word<R: Rng>(rng: &mut R) -> &'static str {
    let u: f64 = rng.gen();
    // u^2.4 puts about half the draws in the first ~6% of the list.
    let idx = (u.powf(2.4) * WORDS.len() as f64) as usize;
    WORDS[idx.min(WORDS.len() - 1)]
}

/// Appends one sentence of at least `words` words to `out`, mixing stock phrases (people
/// repeat themselves a lot) with single words.
fn sentence<R: Rng>(rng: &mut R, words: usize, out: &mut String) {
    let start = out.len();
    let mut n = 0;
    while n < words {
        if n > 0 {
            out.push(' ');
        }
        let roll = rng.gen_range(0..100);
        if roll < 72 {
            let u: f64 = rng.gen();
            let idx = (u.powf(2.0) * PHRASES.len() as f64) as usize;
            let p = PHRASES[idx.min(PHRASES.len() - 1)];
            out.push_str(p);
            n += p.split(' ').count();
            continue;
        }
        if roll < 74 {
            out.push_str(NAMES[rng.gen_range(0..NAMES.len())]);
        } else if roll < 76 {
            // Times and amounts: "at 7:30", "12".
            let k = rng.gen_range(1..60);
            if rng.gen_bool(0.5) {
                out.push_str(&format!("{}:{:02}", k % 12 + 1, rng.gen_range(0..4) * 15));
            } else {
                out.push_str(&k.to_string());
            }
        } else {
            out.push_str(pick_word(rng));
        }
        n += 1;
    }
    if rng.gen_bool(0.7) {
        if let Some(first) = out[start..].chars().next() {
            let upper: String = first.to_uppercase().collect();
            out.replace_range(start..start + first.len_utf8(), &upper);
        }
    }
    let end = match rng.gen_range(0..10) {
        0..=3 => "",
        4..=6 => ".",
        7 => "!",
        8 => "?",
        _ => "...",
    };
    out.push_str(end);
}

/// A random URL, the one part of chat text that does not compress.
fn url<R: Rng>(rng: &mut R, out: &mut String) {
    const HOSTS: &[&str] = &[
        "https://www.youtube.com/watch?v=",
        "https://maps.app.goo.gl/",
        "https://www.instagram.com/p/",
        "https://open.spotify.com/track/",
        "https://www.amazon.com/dp/",
    ];
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    out.push_str(HOSTS[rng.gen_range(0..HOSTS.len())]);
    for _ in 0..rng.gen_range(10..22) {
        out.push(ALNUM[rng.gen_range(0..ALNUM.len())] as char);
    }
}

/// A whole message body: a canned reply, a line, or a few sentences; sometimes emoji or a link.
pub(crate) fn message_text<R: Rng>(rng: &mut R) -> String {
    let mut out = String::new();
    let roll = rng.gen_range(0..100);
    if roll < 22 {
        out.push_str(SHORT_REPLIES[rng.gen_range(0..SHORT_REPLIES.len())]);
    } else if roll < 25 {
        // An emoji-only reply.
        for _ in 0..rng.gen_range(1..4) {
            out.push_str(EMOJI[rng.gen_range(0..EMOJI.len())]);
        }
        return out;
    } else {
        let sentences = match roll {
            25..=69 => 1,
            70..=89 => rng.gen_range(2..4),
            _ => rng.gen_range(3..9),
        };
        for s in 0..sentences {
            if s > 0 {
                out.push(' ');
            }
            let n = rng.gen_range(3..16);
            sentence(rng, n, &mut out);
        }
    }
    if rng.gen_range(0..100) < 3 {
        out.push(' ');
        url(rng, &mut out);
    }
    if rng.gen_range(0..100) < 12 {
        out.push(' ');
        for _ in 0..rng.gen_range(1..3) {
            out.push_str(EMOJI[rng.gen_range(0..EMOJI.len())]);
        }
    }
    out
}

/// A short media caption, or `None` (most media is sent without one).
pub(crate) fn caption<R: Rng>(rng: &mut R) -> Option<String> {
    if rng.gen_range(0..100) < 30 {
        let mut out = String::new();
        let n = rng.gen_range(1..8);
        sentence(rng, n, &mut out);
        Some(out)
    } else {
        None
    }
}

/// An edited version of `old`: a typo fixed or a few words added.
pub(crate) fn edited<R: Rng>(rng: &mut R, old: &str) -> String {
    let mut out = old.to_owned();
    out.push(' ');
    let n = rng.gen_range(1..6);
    sentence(rng, n, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn lengths_vary_from_words_to_paragraphs() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let lens: Vec<usize> = (0..2000).map(|_| message_text(&mut rng).len()).collect();
        let short = lens.iter().filter(|&&l| l < 12).count();
        let long = lens.iter().filter(|&&l| l > 200).count();
        assert!(short > 200, "too few short messages: {short}");
        assert!(long > 20, "too few long messages: {long}");
        assert!(lens.iter().all(|&l| l < 1200));
    }
}
