//! A look at a `.pt` file's pickles before burn-store reads them.
//!
//! burn-store's pickle reader runs no code, but it builds the pickle's objects as Rust values:
//! a pickle nested a million lists deep makes a value whose walk and drop recurse a million
//! times (the process aborts on a stack overflow, which no error handling can catch), and a
//! pickle that fetches a memoised list into itself again and again doubles its size each time.
//! This scan follows the pickle machine's stack without building anything, keeping for each
//! item only how deep it nests and how many objects it holds, and refuses a file past limits
//! no real checkpoint comes near (a state dict nests about six deep).
//!
//! The scan only refuses; anything it does not understand (an unknown opcode, a truncated
//! pickle) is left to burn-store, which answers it with its own error.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// Deeper than this is refused.
pub const MAX_DEPTH: u32 = 256;
/// More objects in one item than this is refused.
pub const MAX_OBJECTS: u64 = 10_000_000;
/// More items on the machine's stack at once than this is refused.
pub const MAX_STACK: usize = 1_000_000;

/// Why a pickle is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// Scans the pickles of the `.pt` file at `path`: every `.pkl` entry of a zip archive, or the
/// file's leading pickles (the legacy format's five, or a plain pickle's one).
pub fn check_file(path: &Path) -> Result<(), Refused> {
    let Ok(mut file) = std::fs::File::open(path) else {
        return Ok(());
    };
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut magic = [0u8; 2];
    if file.read_exact(&mut magic).is_err() {
        return Ok(());
    }
    if &magic == b"PK" {
        // A zip: only its pickles are read (the tensors' storages, gigabytes in a large
        // checkpoint, are not touched).
        let Ok(mut archive) = zip::ZipArchive::new(file) else {
            return Ok(());
        };
        for i in 0..archive.len() {
            let Ok(entry) = archive.by_index(i) else {
                continue;
            };
            if !entry.name().ends_with(".pkl") {
                continue;
            }
            let mut pickle = Vec::new();
            // An entry whose size is a lie is burn-store's to refuse: read what the file has.
            if entry.take(file_len).read_to_end(&mut pickle).is_err() {
                continue;
            }
            scan(&pickle)?;
        }
        return Ok(());
    }
    // A legacy or plain pickle file: its pickles come first and are small (the storages follow
    // them), so the first 64 MiB hold them; a longer pickle is left to burn-store, and any
    // attack of the kinds above shows within far fewer bytes.
    let mut head = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(64 << 20).read_to_end(&mut head));
    if read.is_err() {
        return Ok(());
    }
    let mut at = 0;
    for _ in 0..5 {
        match scan(&head[at..])? {
            Some(end) if end > 0 => at += end,
            _ => break,
        }
    }
    Ok(())
}

/// One stack item: how deep it nests and how many objects it holds (itself included).
#[derive(Clone, Copy, Default)]
struct Item {
    depth: u32,
    objects: u64,
}

impl Item {
    const SCALAR: Item = Item {
        depth: 0,
        objects: 1,
    };

    /// A container of `items`.
    fn of(items: &[Item]) -> Item {
        let mut it = Item {
            depth: 1,
            objects: 1,
        };
        for x in items {
            it.depth = it.depth.max(x.depth.saturating_add(1));
            it.objects = it.objects.saturating_add(x.objects);
        }
        it
    }

    /// This container after `items` were added to it.
    fn with(self, items: &[Item]) -> Item {
        let mut it = self;
        for x in items {
            it.depth = it.depth.max(x.depth.saturating_add(1));
            it.objects = it.objects.saturating_add(x.objects);
        }
        it
    }
}

struct Machine {
    stack: Vec<Item>,
    marks: Vec<usize>,
    memo: HashMap<u64, Item>,
}

/// A parse the scan gives up on (left to burn-store).
struct GiveUp;

impl Machine {
    fn push(&mut self, it: Item) -> Result<(), Refused> {
        if it.depth > MAX_DEPTH {
            return Err(Refused(format!(
                "its pickle nests deeper than {MAX_DEPTH} levels, which no checkpoint does"
            )));
        }
        if it.objects > MAX_OBJECTS {
            return Err(Refused(format!(
                "its pickle builds more than {MAX_OBJECTS} objects in one value, which no checkpoint does"
            )));
        }
        if self.stack.len() + self.marks.len() >= MAX_STACK {
            return Err(Refused(format!(
                "its pickle keeps more than {MAX_STACK} values open at once, which no checkpoint does"
            )));
        }
        self.stack.push(it);
        Ok(())
    }

    fn pop(&mut self) -> Result<Item, GiveUp> {
        self.stack.pop().ok_or(GiveUp)
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Item>, GiveUp> {
        if self.stack.len() < n {
            return Err(GiveUp);
        }
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    /// The items above the last mark, and the mark.
    fn pop_mark(&mut self) -> Result<Vec<Item>, GiveUp> {
        let at = self.marks.pop().ok_or(GiveUp)?;
        if at > self.stack.len() {
            return Err(GiveUp);
        }
        Ok(self.stack.split_off(at))
    }

    fn top(&mut self) -> Result<&mut Item, GiveUp> {
        self.stack.last_mut().ok_or(GiveUp)
    }
}

/// Scans one pickle from the start of `data`: `Ok(Some(end))` past its STOP, `Ok(None)` when
/// the scan gave up, `Err` when it is refused.
pub fn scan(data: &[u8]) -> Result<Option<usize>, Refused> {
    let mut m = Machine {
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    match run(&mut m, data) {
        Ok(Step::Stop(end)) => Ok(Some(end)),
        Ok(Step::Refused(r)) => Err(r),
        Err(GiveUp) => Ok(None),
    }
}

enum Step {
    Stop(usize),
    Refused(Refused),
}

fn run(m: &mut Machine, data: &[u8]) -> Result<Step, GiveUp> {
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Result<&[u8], GiveUp> {
        let end = at.checked_add(n).ok_or(GiveUp)?;
        let s = data.get(*at..end).ok_or(GiveUp)?;
        *at = end;
        Ok(s)
    };
    let uint = |b: &[u8]| b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64);
    let line = |at: &mut usize| -> Result<&[u8], GiveUp> {
        let rest = data.get(*at..).ok_or(GiveUp)?;
        let n = rest.iter().position(|&b| b == b'\n').ok_or(GiveUp)?;
        *at += n + 1;
        Ok(&rest[..n])
    };
    // The text key of PUT and GET.
    let text_key = |b: &[u8]| -> Result<u64, GiveUp> {
        std::str::from_utf8(b)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or(GiveUp)
    };
    macro_rules! push {
        ($it:expr) => {
            if let Err(r) = m.push($it) {
                return Ok(Step::Refused(r));
            }
        };
    }
    loop {
        let op = *take(&mut at, 1)?.first().ok_or(GiveUp)?;
        match op {
            // PROTO, then FRAME.
            0x80 => {
                take(&mut at, 1)?;
            }
            0x95 => {
                take(&mut at, 8)?;
            }
            b'.' => return Ok(Step::Stop(at)),
            // Scalars with a fixed-size argument.
            b'K' => {
                take(&mut at, 1)?;
                push!(Item::SCALAR);
            }
            b'M' => {
                take(&mut at, 2)?;
                push!(Item::SCALAR);
            }
            b'J' => {
                take(&mut at, 4)?;
                push!(Item::SCALAR);
            }
            b'G' => {
                take(&mut at, 8)?;
                push!(Item::SCALAR);
            }
            // Scalars with a length-prefixed argument.
            0x8a | b'U' | 0x8c | b'C' => {
                let n = uint(take(&mut at, 1)?) as usize;
                take(&mut at, n)?;
                push!(Item::SCALAR);
            }
            0x8b | b'T' | b'X' | b'B' => {
                let n = uint(take(&mut at, 4)?) as usize;
                take(&mut at, n)?;
                push!(Item::SCALAR);
            }
            0x8d | 0x8e | 0x96 => {
                let n = uint(take(&mut at, 8)?) as usize;
                take(&mut at, n)?;
                push!(Item::SCALAR);
            }
            // Scalars with a text argument ending at a newline.
            b'I' | b'L' | b'S' | b'V' | b'F' | b'P' => {
                line(&mut at)?;
                push!(if op == b'P' {
                    Item::of(&[Item::SCALAR])
                } else {
                    Item::SCALAR
                });
            }
            b'c' => {
                line(&mut at)?;
                line(&mut at)?;
                push!(Item::SCALAR);
            }
            b'N' | 0x88 | 0x89 => push!(Item::SCALAR),
            // Extension registry codes.
            0x82 => {
                take(&mut at, 1)?;
                push!(Item::SCALAR);
            }
            0x83 => {
                take(&mut at, 2)?;
                push!(Item::SCALAR);
            }
            0x84 => {
                take(&mut at, 4)?;
                push!(Item::SCALAR);
            }
            // Empty containers.
            b']' | b')' | b'}' | 0x8f => push!(Item {
                depth: 1,
                objects: 1
            }),
            b'(' => {
                if m.stack.len() + m.marks.len() >= MAX_STACK {
                    return Ok(Step::Refused(Refused(format!(
                        "its pickle keeps more than {MAX_STACK} values open at once, which no checkpoint does"
                    ))));
                }
                m.marks.push(m.stack.len());
            }
            // Containers of the items above the mark.
            b'l' | b't' | b'd' | 0x91 => {
                let items = m.pop_mark()?;
                push!(Item::of(&items));
            }
            // OBJ: class and arguments above the mark. INST: the same, with a class by name.
            b'o' => {
                let items = m.pop_mark()?;
                push!(Item::of(&items));
            }
            b'i' => {
                line(&mut at)?;
                line(&mut at)?;
                let items = m.pop_mark()?;
                push!(Item::of(&items));
            }
            0x85..=0x87 => {
                let items = m.pop_n((op - 0x84) as usize)?;
                push!(Item::of(&items));
            }
            // Additions to the container under the mark.
            b'e' | b'u' | 0x90 => {
                let items = m.pop_mark()?;
                let top = m.top()?;
                *top = top.with(&items);
                let top = *top;
                m.pop()?;
                push!(top);
            }
            b'a' | b'b' => {
                let x = m.pop()?;
                let top = m.top()?;
                *top = top.with(&[x]);
                let top = *top;
                m.pop()?;
                push!(top);
            }
            b's' => {
                let kv = m.pop_n(2)?;
                let top = m.top()?;
                *top = top.with(&kv);
                let top = *top;
                m.pop()?;
                push!(top);
            }
            // Calls: callable and arguments become one value.
            b'R' | 0x81 => {
                let items = m.pop_n(2)?;
                push!(Item::of(&items));
            }
            0x92 => {
                let items = m.pop_n(3)?;
                push!(Item::of(&items));
            }
            0x93 => {
                let items = m.pop_n(2)?;
                push!(Item::of(&items));
            }
            b'Q' => {
                let x = m.pop()?;
                push!(Item::of(&[x]));
            }
            b'0' => {
                m.pop()?;
            }
            b'1' => {
                m.pop_mark()?;
            }
            b'2' => {
                let x = *m.top()?;
                push!(x);
            }
            // The memo: what GET fetches is a copy of what PUT stored.
            b'p' => {
                let key = text_key(line(&mut at)?)?;
                let x = *m.top()?;
                m.memo.insert(key, x);
            }
            b'q' | b'r' | 0x94 => {
                let key = match op {
                    b'q' => uint(take(&mut at, 1)?),
                    b'r' => uint(take(&mut at, 4)?),
                    _ => m.memo.len() as u64,
                };
                let x = *m.top()?;
                m.memo.insert(key, x);
            }
            b'g' => {
                let key = text_key(line(&mut at)?)?;
                let x = m.memo.get(&key).copied().unwrap_or(Item::SCALAR);
                push!(x);
            }
            b'h' | b'j' => {
                let key = if op == b'h' {
                    uint(take(&mut at, 1)?)
                } else {
                    uint(take(&mut at, 4)?)
                };
                let x = m.memo.get(&key).copied().unwrap_or(Item::SCALAR);
                push!(x);
            }
            0x97 => push!(Item::SCALAR),
            0x98 => {}
            _ => return Err(GiveUp),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_dict_like_pickle_passes() {
        // {'w': _rebuild((pid,), 0, (2, 3), (3, 1), False, OrderedDict())}
        let mut p =
            b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02("
                .to_vec();
        p.extend(b"(X\x07\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQ");
        p.extend(b"K\x00K\x02K\x03\x86K\x03K\x01\x86\x89ccollections\nOrderedDict\n)RtRs.");
        assert_eq!(scan(&p).unwrap(), Some(p.len()));
    }

    #[test]
    fn deep_nesting_and_memo_doubling_are_refused() {
        let mut deep = b"\x80\x02".to_vec();
        deep.extend(std::iter::repeat_n(b']', 10_000));
        deep.extend(std::iter::repeat_n(b'a', 9_999));
        deep.push(b'.');
        assert!(scan(&deep).unwrap_err().0.contains("deeper"));

        // l = []; then 40 times: l = [l, l] through the memo.
        let mut wide = b"\x80\x02]q\x00".to_vec();
        for _ in 0..40 {
            wide.extend(b"h\x00h\x00\x86q\x00");
        }
        wide.push(b'.');
        assert!(scan(&wide).unwrap_err().0.contains("objects"));

        let mut marks = b"\x80\x02".to_vec();
        marks.extend(std::iter::repeat_n(b'(', MAX_STACK + 1));
        assert!(scan(&marks).unwrap_err().0.contains("open"));
    }

    #[test]
    fn what_it_cannot_parse_is_left_to_the_reader() {
        assert_eq!(scan(b"\x80\x02\xff").unwrap(), None);
        assert_eq!(scan(b"\x80\x02X\xff\xff\xff\xff").unwrap(), None);
        assert_eq!(scan(b"").unwrap(), None);
    }
}
