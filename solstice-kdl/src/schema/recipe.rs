//! The rules of an image recipe (`crate::recipe`): one `image` root with a
//! base, labels, a disk size, packages, a user and ordered steps.

use kdl::{KdlDocument, KdlNode, KdlValue};
use miette::SourceSpan;

use super::Cx;
use super::readers::{Ty, name_span, suggest};
use crate::diagnostic::{Code, Problem};
use crate::recipe::{
    Base, MAX_DISK_GIB, MAX_IMAGE_LABELS, MAX_PACKAGES, MAX_RECIPE_PATH, MAX_RECIPE_STEPS, Recipe,
    RecipeStep, valid_package, valid_user,
};

const CHILDREN: &[&str] = &[
    "label",
    "debootstrap",
    "from",
    "disk_gib",
    "packages",
    "copy",
    "run",
    "user",
];

pub(crate) fn recipe(
    doc: &KdlDocument,
    problems: &mut Vec<Problem>,
    omitted: &mut usize,
) -> Option<Recipe> {
    super::checked(problems, omitted, |cx| cx.recipe_root(doc))
}

impl Cx {
    fn recipe_root(&mut self, doc: &KdlDocument) -> Option<Recipe> {
        let mut first: Option<SourceSpan> = None;
        let mut result = None;
        for node in doc.nodes() {
            let name = node.name().value();
            if let Some(first) = first {
                self.push(
                    Problem::new(
                        Code::Root,
                        name_span(node),
                        "a recipe has exactly one root node",
                        "second root node",
                    )
                    .also(first, "the root node")
                    .help("one recipe per file: put everything inside `image { ... }`"),
                );
                continue;
            }
            first = Some(name_span(node));
            if name == "image" {
                result = self.image(node);
            } else {
                let p = Problem::new(
                    Code::Root,
                    name_span(node),
                    format!("the root node must be `image`, not `{name}`"),
                    "expected `image`",
                );
                self.push(match suggest(name, &["image"]) {
                    Some(_) => p.help("did you mean `image`?"),
                    None => p.help("wrap the recipe in `image name=\"...\" { ... }`"),
                });
            }
        }
        if first.is_none() {
            self.push(
                Problem::new(
                    Code::Root,
                    SourceSpan::from(0..0),
                    "the file has no `image` node",
                    "empty document",
                )
                .help("start with `image name=\"debian-12\" { label \"debian-12\"; debootstrap suite=\"bookworm\" }`"),
            );
        }
        result
    }

    fn image(&mut self, node: &KdlNode) -> Option<Recipe> {
        let props = self.props(node, &["name"]);
        self.no_args(node);
        let name = match props.get("name") {
            None => {
                self.push(
                    Problem::new(
                        Code::MissingProperty,
                        name_span(node),
                        "`image` needs a `name`",
                        "no name",
                    )
                    .help("write `image name=\"debian-12\" { ... }`: the name is the image's directory"),
                );
                None
            }
            Some(e) => match self.expect_string(e) {
                Some(n) if crate::valid_label(&n) => Some(n),
                Some(n) => {
                    self.invalid(
                        e.span(),
                        format!("`{n}` is not a valid image name"),
                        "letters, digits, `.`, `_` and `-`, at most 128 bytes",
                    );
                    None
                }
                None => None,
            },
        };
        let mut labels: Vec<(String, SourceSpan)> = Vec::new();
        let mut base: Option<(Base, SourceSpan)> = None;
        let mut base_seen: Option<SourceSpan> = None;
        let mut disk: Option<(u32, SourceSpan)> = None;
        let mut packages: Vec<(String, SourceSpan)> = Vec::new();
        let mut steps = Vec::new();
        let mut user: Option<(String, SourceSpan)> = None;
        for child in self.children(node, CHILDREN) {
            let at = name_span(child);
            match child.name().value() {
                "label" => {
                    self.no_props(child);
                    self.no_children(child);
                    for (l, span) in self.string_args(child, 1) {
                        if !crate::valid_label(&l) {
                            self.invalid(span, format!("`{l}` is not a valid label"),
                                "letters, digits, `.`, `_` and `-`, at most 128 bytes: what a job's `runs_on` names");
                        } else if let Some((_, first)) = labels.iter().find(|(x, _)| *x == l) {
                            let first = *first;
                            self.push(
                                Problem::new(
                                    Code::InvalidValue,
                                    span,
                                    format!("label `{l}` is given twice"),
                                    "again here",
                                )
                                .also(first, "first here")
                                .help("remove one of the two"),
                            );
                        } else {
                            labels.push((l, span));
                        }
                    }
                }
                "debootstrap" | "from" => {
                    if let Some(first) = base_seen {
                        self.push(
                            Problem::new(Code::DuplicateNode, at, "an image has one base", "second base")
                                .also(first, "the base")
                                .help("keep either `debootstrap` (a fresh Debian root) or `from` (another recipe's image)"),
                        );
                        continue;
                    }
                    base_seen = Some(at);
                    if let Some(b) = self.base(child) {
                        base = Some((b, at));
                    }
                }
                "disk_gib" => {
                    if let Some((_, first)) = disk {
                        self.push(
                            Problem::new(
                                Code::DuplicateNode,
                                at,
                                "`disk_gib` may appear only once",
                                "repeated here",
                            )
                            .also(first, "first here")
                            .help("keep one"),
                        );
                        continue;
                    }
                    if let Some(n) = self.one_integer(child, 1, MAX_DISK_GIB) {
                        disk = Some((n, at));
                    }
                }
                "packages" => {
                    self.no_props(child);
                    self.no_children(child);
                    for (p, span) in self.string_args(child, 1) {
                        if !valid_package(&p) {
                            self.invalid(span, format!("`{p}` is not a Debian package name"),
                                "lower-case letters, digits and `+.-` (optionally `=VERSION`), as `apt-get install` takes them");
                        } else if packages.len() == MAX_PACKAGES {
                            self.invalid(
                                span,
                                format!("more than {MAX_PACKAGES} packages"),
                                "install a metapackage, or split the image in two with `from`",
                            );
                        } else if !packages.iter().any(|(x, _)| *x == p) {
                            packages.push((p, span));
                        }
                    }
                }
                "copy" => {
                    let props = self.props(child, &["from", "to"]);
                    self.no_args(child);
                    self.no_children(child);
                    let from = self.required_path(child, &props, "from");
                    let to = self.required_path(child, &props, "to");
                    if let Some(to) = &to
                        && (!to.starts_with('/') || to.split('/').any(|c| c == ".."))
                    {
                        self.invalid(props["to"].span(), format!("`to` must be an absolute path in the image without `..`, not `{to}`"),
                            "write where the file goes in the image, `/opt/tool`");
                    }
                    if let (Some(from), Some(to)) = (from, to) {
                        steps.push((RecipeStep::Copy { from, to }, at));
                    }
                }
                "run" => {
                    self.no_props(child);
                    self.no_children(child);
                    let args = self.string_args(child, 1);
                    if args.len() > 1 {
                        self.invalid(
                            args[1].1,
                            "`run` takes one command",
                            "write one `run` per command, or join them with `&&` in one string",
                        );
                    } else if let Some((command, span)) = args.into_iter().next() {
                        if command.trim().is_empty() || command.contains('\0') {
                            self.invalid(
                                span,
                                "the command is empty",
                                "write the command to run in the image",
                            );
                        } else {
                            steps.push((RecipeStep::Run { command }, at));
                        }
                    }
                }
                "user" => {
                    self.no_props(child);
                    self.no_children(child);
                    if let Some((_, first)) = &user {
                        let first = *first;
                        self.push(
                            Problem::new(
                                Code::DuplicateNode,
                                at,
                                "`user` may appear only once",
                                "repeated here",
                            )
                            .also(first, "first here")
                            .help("steps run as one user"),
                        );
                        continue;
                    }
                    let args = self.string_args(child, 1);
                    if let Some((u, span)) = args.into_iter().next() {
                        if u == "root" || !valid_user(&u) {
                            self.invalid(span, format!("`{u}` cannot be the steps' user"),
                                "a user name `useradd` takes (`[a-z_][a-z0-9_-]*`), not root; leave `user` out to run steps as root");
                        } else {
                            user = Some((u, span));
                        }
                    }
                }
                _ => {}
            }
        }
        if steps.len() > MAX_RECIPE_STEPS {
            let at = steps[MAX_RECIPE_STEPS].1;
            self.invalid(
                at,
                format!("more than {MAX_RECIPE_STEPS} `copy` and `run` steps"),
                "join commands into a script you copy in and run once",
            );
        }
        if labels.len() > MAX_IMAGE_LABELS {
            self.invalid(
                labels[MAX_IMAGE_LABELS].1,
                format!("more than {MAX_IMAGE_LABELS} labels"),
                "an image serves a few labels; use one label per kind of job",
            );
        }
        if labels.is_empty() {
            self.push(
                Problem::new(
                    Code::MissingProperty,
                    name_span(node),
                    "the image serves no label",
                    "no `label` inside",
                )
                .help("add `label \"debian-12\"`: the `runs_on` label jobs use to get this image"),
            );
        }
        if base_seen.is_none() {
            self.push(
                Problem::new(Code::MissingProperty, name_span(node), "the image has no base", "no `debootstrap` or `from` inside")
                    .help("add `debootstrap suite=\"bookworm\"` for a fresh Debian root, or `from \"../debian-12\"` to build on another recipe"),
            );
        }
        Some(Recipe {
            name: name?,
            labels: labels.into_iter().map(|(l, _)| l).collect(),
            base: base?.0,
            disk_gib: disk.map_or(8, |(n, _)| n),
            packages: packages.into_iter().map(|(p, _)| p).collect(),
            steps: steps.into_iter().map(|(s, _)| s).collect(),
            user: user.map(|(u, _)| u),
        })
    }

    fn base(&mut self, node: &KdlNode) -> Option<Base> {
        self.no_children(node);
        if node.name().value() == "from" {
            self.no_props(node);
            let args = self.string_args(node, 1);
            let (path, span) = args.into_iter().next()?;
            if path.is_empty() || path.len() > MAX_RECIPE_PATH || path.contains('\0') {
                self.invalid(
                    span,
                    "`from` names another recipe: its directory or its file",
                    "for example `from \"../debian-12\"`",
                );
                return None;
            }
            return Some(Base::Recipe { path });
        }
        let props = self.props(node, &["suite", "mirror"]);
        self.no_args(node);
        let suite = match props.get("suite") {
            None => {
                self.push(
                    Problem::new(
                        Code::MissingProperty,
                        name_span(node),
                        "`debootstrap` needs a `suite`",
                        "no suite",
                    )
                    .help("write `debootstrap suite=\"bookworm\"`"),
                );
                None
            }
            Some(e) => {
                let s = self.expect_string(e)?;
                let ok = !s.is_empty()
                    && s.len() <= 64
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                if !ok {
                    self.invalid(
                        e.span(),
                        format!("`{s}` is not a release name"),
                        "a Debian release: `bookworm`, `trixie`, `stable`",
                    );
                    None
                } else {
                    Some(s)
                }
            }
        };
        let mirror = match props.get("mirror") {
            None => None,
            Some(e) => {
                let m = self.expect_string(e)?;
                let ok = (m.starts_with("http://")
                    || m.starts_with("https://")
                    || m.starts_with("file:///"))
                    && m.len() <= 512
                    && !m.bytes().any(|b| b.is_ascii_control() || b == b' ');
                if !ok {
                    self.invalid(
                        e.span(),
                        format!("`{m}` is not a mirror URL"),
                        "an http://, https:// or file:/// URL of a Debian archive",
                    );
                    return None;
                }
                Some(m)
            }
        };
        Some(Base::Debootstrap {
            suite: suite?,
            mirror,
        })
    }

    fn required_path(
        &mut self,
        node: &KdlNode,
        props: &std::collections::HashMap<&'static str, &kdl::KdlEntry>,
        key: &str,
    ) -> Option<String> {
        let Some(entry) = props.get(key) else {
            self.push(
                Problem::new(
                    Code::MissingProperty,
                    name_span(node),
                    format!("`copy` needs `{key}`"),
                    format!("no `{key}`"),
                )
                .help("write `copy from=\"files/tool\" to=\"/usr/local/bin/tool\"`"),
            );
            return None;
        };
        let p = self.expect_string(entry)?;
        if p.is_empty() || p.len() > MAX_RECIPE_PATH || p.contains('\0') {
            self.invalid(
                entry.span(),
                format!("`{key}` must be a path of 1 to {MAX_RECIPE_PATH} bytes"),
                "write a path",
            );
            return None;
        }
        Some(p)
    }

    fn one_integer(&mut self, node: &KdlNode, min: u32, max: u32) -> Option<u32> {
        self.no_props(node);
        self.no_children(node);
        let name = node.name().value();
        let mut args = node.entries().iter().filter(|e| e.name().is_none());
        let Some(entry) = args.next() else {
            self.push(
                Problem::new(
                    Code::UnexpectedArgument,
                    name_span(node),
                    format!("`{name}` needs a number"),
                    "missing argument",
                )
                .help(format!("write `{name} 8`")),
            );
            return None;
        };
        if let Some(extra) = args.next() {
            self.invalid(
                extra.span(),
                format!("`{name}` takes one number"),
                "remove the others",
            );
        }
        match entry.value() {
            KdlValue::Integer(n) if (i128::from(min)..=i128::from(max)).contains(n) => {
                Some(*n as u32)
            }
            KdlValue::Integer(n) => {
                self.invalid(
                    entry.span(),
                    format!("`{name}` must be between {min} and {max}, not {n}"),
                    "the size of a VM's root disk in GiB",
                );
                None
            }
            _ => {
                self.type_error(entry, Ty::Integer);
                None
            }
        }
    }

    fn no_props(&mut self, node: &KdlNode) {
        self.props(node, &[]);
    }

    fn invalid(&mut self, span: SourceSpan, message: impl Into<String>, help: impl Into<String>) {
        self.push(Problem::new(Code::InvalidValue, span, message, "invalid value").help(help));
    }
}
