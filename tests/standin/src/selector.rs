//! Label and field selectors (`k8s.io/apimachinery/pkg/labels` and `fields` grammar).

use serde_json::Value;

/// One label-selector requirement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    Gt(String, i64),
    Lt(String, i64),
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn word(&mut self) -> String {
        let start = self.i;
        while let Some(c) = self.peek() {
            if c.is_ascii_whitespace() || b"=!,()<>".contains(&c) {
                break;
            }
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }
    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }
}

fn err(sel: &str, what: &str) -> String {
    format!("unable to parse requirement: {what} in selector {sel:?}")
}

/// Parse a label selector string. An empty string selects everything.
pub(crate) fn parse_label_selector(sel: &str) -> Result<Vec<Requirement>, String> {
    let mut lx = Lexer {
        s: sel.as_bytes(),
        i: 0,
    };
    let mut out = Vec::new();
    loop {
        lx.skip_ws();
        if lx.peek().is_none() {
            break;
        }
        if lx.eat("!") {
            lx.skip_ws();
            let k = lx.word();
            if k.is_empty() {
                return Err(err(sel, "expected a key after '!'"));
            }
            out.push(Requirement::NotExists(k));
        } else {
            let k = lx.word();
            if k.is_empty() {
                return Err(err(sel, "expected a key"));
            }
            lx.skip_ws();
            match lx.peek() {
                None | Some(b',') => out.push(Requirement::Exists(k)),
                Some(b'=') => {
                    if !lx.eat("==") {
                        lx.eat("=");
                    }
                    lx.skip_ws();
                    out.push(Requirement::Eq(k, lx.word()));
                }
                Some(b'!') => {
                    if !lx.eat("!=") {
                        return Err(err(sel, "expected '!='"));
                    }
                    lx.skip_ws();
                    out.push(Requirement::NotEq(k, lx.word()));
                }
                Some(c @ (b'<' | b'>')) => {
                    lx.i += 1;
                    lx.skip_ws();
                    let v = lx.word();
                    let n: i64 = v.parse().map_err(|_| {
                        err(
                            sel,
                            &format!(
                                "for 'Gt', 'Lt' operators, the value must be an integer, got {v:?}"
                            ),
                        )
                    })?;
                    out.push(if c == b'<' {
                        Requirement::Lt(k, n)
                    } else {
                        Requirement::Gt(k, n)
                    });
                }
                Some(_) => {
                    let op = lx.word();
                    let notin = match op.as_str() {
                        "in" => false,
                        "notin" => true,
                        other => {
                            return Err(err(
                                sel,
                                &format!("found '{other}', expected: in, notin, =, ==, !=, gt, lt"),
                            ));
                        }
                    };
                    lx.skip_ws();
                    if !lx.eat("(") {
                        return Err(err(sel, "expected '('"));
                    }
                    let mut vals = Vec::new();
                    loop {
                        lx.skip_ws();
                        if lx.eat(")") {
                            break;
                        }
                        let v = lx.word();
                        vals.push(v);
                        lx.skip_ws();
                        if lx.eat(",") {
                            continue;
                        }
                        if lx.eat(")") {
                            break;
                        }
                        return Err(err(sel, "expected ',' or ')'"));
                    }
                    if vals.is_empty() {
                        return Err(err(
                            sel,
                            "for 'in', 'notin' operators, values set can't be empty",
                        ));
                    }
                    out.push(if notin {
                        Requirement::NotIn(k, vals)
                    } else {
                        Requirement::In(k, vals)
                    });
                }
            }
        }
        lx.skip_ws();
        match lx.peek() {
            None => break,
            Some(b',') => lx.i += 1,
            Some(c) => return Err(err(sel, &format!("found '{}', expected: ','", c as char))),
        }
    }
    Ok(out)
}

/// Whether `labels` (the `metadata.labels` object, possibly absent) satisfies every requirement.
pub(crate) fn matches(reqs: &[Requirement], labels: Option<&Value>) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    reqs.iter().all(|r| match r {
        Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
        Requirement::NotEq(k, v) => get(k) != Some(v.as_str()),
        Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Requirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Requirement::Exists(k) => get(k).is_some(),
        Requirement::NotExists(k) => get(k).is_none(),
        Requirement::Gt(k, n) => get(k)
            .and_then(|x| x.parse::<i64>().ok())
            .is_some_and(|x| x > *n),
        Requirement::Lt(k, n) => get(k)
            .and_then(|x| x.parse::<i64>().ok())
            .is_some_and(|x| x < *n),
    })
}

/// A parsed field selector: (field path, wanted value, negated).
pub(crate) type FieldSelector = Vec<(String, String, bool)>;

/// Parse `metadata.name=x,metadata.namespace!=y` against the allowed field names.
pub(crate) fn parse_field_selector(sel: &str, allowed: &[&str]) -> Result<FieldSelector, String> {
    let mut out = Vec::new();
    for part in sel.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v, neg) = if let Some((k, v)) = part.split_once("!=") {
            (k, v, true)
        } else if let Some((k, v)) = part.split_once("==") {
            (k, v, false)
        } else if let Some((k, v)) = part.split_once('=') {
            (k, v, false)
        } else {
            return Err(format!(
                "invalid selector: '{sel}'; can't understand '{part}'"
            ));
        };
        let k = k.trim();
        if !allowed.contains(&k) {
            return Err(format!("field label not supported: {k}"));
        }
        out.push((k.to_string(), v.trim().to_string(), neg));
    }
    Ok(out)
}

/// Whether `obj` satisfies a field selector; fields are dotted paths into the object.
pub(crate) fn field_matches(sel: &FieldSelector, obj: &Value) -> bool {
    sel.iter().all(|(path, want, neg)| {
        let mut cur = Some(obj);
        for seg in path.split('.') {
            cur = cur.and_then(|c| c.get(seg));
        }
        let actual = match cur {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        (actual == *want) != *neg
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_all_operators() {
        let r = parse_label_selector("a=b, c==d,e!=f,g,!h,i in (x, y),j notin (z),k>3,l<2")
            .expect("valid selector");
        assert_eq!(r.len(), 9);
        assert_eq!(
            r[5],
            Requirement::In("i".into(), vec!["x".into(), "y".into()])
        );
        assert_eq!(r[4], Requirement::NotExists("h".into()));
    }

    #[test]
    fn matches_semantics() {
        let l = json!({"app": "checkout", "version": "v1", "auto_remediation": "active"});
        let m = |s: &str| matches(&parse_label_selector(s).expect("valid"), Some(&l));
        assert!(m("app=checkout"));
        assert!(m("app==checkout,version in (v1,v2)"));
        assert!(!m("version notin (v1)"));
        assert!(m("missing!=x"));
        assert!(m("!missing"));
        assert!(!m("missing"));
        assert!(m("auto_remediation"));
        assert!(m(""));
        assert!(parse_label_selector("a in x").is_err());
        assert!(parse_label_selector("a b").is_err());
    }

    #[test]
    fn field_selectors() {
        let o = json!({"metadata": {"name": "x", "namespace": "shop"}});
        let s = parse_field_selector(
            "metadata.name=x,metadata.namespace!=kube-system",
            &["metadata.name", "metadata.namespace"],
        )
        .expect("valid");
        assert!(field_matches(&s, &o));
        assert!(parse_field_selector("spec.foo=1", &["metadata.name"]).is_err());
    }
}
