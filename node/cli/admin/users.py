"""``ainode users``: users and their API tokens."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

from node.cli.admin.common import (
    actor,
    admin_service,
    fail,
    format_time,
    guard,
    print_result,
    with_config,
)


def users_add(args: argparse.Namespace) -> int:
    from node.api.serialize import user_json

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif os.environ.get("AINODE_NEW_PASSWORD"):
        password = os.environ["AINODE_NEW_PASSWORD"]
    else:
        password = getpass.getpass(f"Password for {args.username}: ")
        if password != getpass.getpass("Again: "):
            return fail("the passwords differ")
    admin = admin_service(args)
    user = admin.add_user(args.username, password, args.role, actor())
    return print_result(args, user_json(user), f"user {user.username} added with role {user.role}")


def users_list(args: argparse.Namespace) -> int:
    for user in admin_service(args).users.users():
        flag = " (disabled)" if user.disabled else ""
        print(f"{user.username:24} {user.role:7} since {format_time(user.created_at)}{flag}")
    return 0


def _new_password(args: argparse.Namespace, username: str) -> str | None:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if os.environ.get("AINODE_NEW_PASSWORD"):
        return os.environ["AINODE_NEW_PASSWORD"]
    password = getpass.getpass(f"Password for {username}: ")
    return password if password == getpass.getpass("Again: ") else None


def users_modify(args: argparse.Namespace) -> int:
    """As ``PATCH /api/users/{name}``: role, disabled and (asked for) password."""
    from node.api.serialize import user_json

    password = None
    if args.password or args.password_stdin:
        password = _new_password(args, args.username)
        if password is None:
            return fail("the passwords differ")
    disabled = True if args.disable else False if args.enable else None
    if args.role is None and password is None and disabled is None:
        return fail("nothing to change: give --role, --disable/--enable or --password")
    user = admin_service(args).update_user(
        args.username, actor(), role=args.role, password=password, disabled=disabled
    )
    state = "disabled" if user.disabled else "enabled"
    return print_result(args, user_json(user), f"user {user.username}: {user.role}, {state}")


def users_remove(args: argparse.Namespace) -> int:
    admin_service(args).delete_user(args.username, actor())
    return print_result(args, {"deleted": args.username}, f"user {args.username} removed")


def tokens_add(args: argparse.Namespace) -> int:
    """As ``POST /api/users/{name}/tokens``: the secret is printed once."""
    from datetime import datetime

    from node.api.serialize import token_json
    from node.errors import InvalidInput

    try:
        expires_at = datetime.fromisoformat(args.expires_at) if args.expires_at else None
    except ValueError:
        raise InvalidInput(f"expires_at: not an ISO 8601 time: {args.expires_at!r}") from None
    admin = admin_service(args)
    when = admin.token_expiry(args.expires_in_days, expires_at)
    secret, token = admin.create_token(args.username, args.name, actor(), when)
    until = f"until {format_time(token.expires_at)}" if token.expires_at else "without expiry"
    text = f"token {token.id} for {token.username} ({until}); shown once:\n{secret}"
    return print_result(args, {**token_json(token), "token": secret}, text)


def tokens_remove(args: argparse.Namespace) -> int:
    from node.api.serialize import token_json

    token = admin_service(args).revoke_token(args.token_id, actor())
    return print_result(args, token_json(token), f"token {token.id} of {token.username} revoked")


def add_commands(commands: Any) -> None:
    """Register ``ainode users`` (users and their API tokens)."""
    users = commands.add_parser("users", help="manage console/API users")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    add = with_config(users_sub.add_parser("add", help="add a user (asks for the password)"))
    add.add_argument("username")
    add.add_argument("--role", choices=["admin", "viewer"], default="viewer")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    add.add_argument("--json", action="store_true")
    add.set_defaults(handler=guard(users_add))
    with_config(users_sub.add_parser("list", help="list users")).set_defaults(
        handler=guard(users_list)
    )
    modify = with_config(users_sub.add_parser("modify", help="change role, state or password"))
    modify.add_argument("username")
    modify.add_argument("--role", choices=["admin", "viewer"])
    state = modify.add_mutually_exclusive_group()
    state.add_argument("--disable", action="store_true")
    state.add_argument("--enable", action="store_true")
    modify.add_argument("--password", action="store_true", help="ask for a new password")
    modify.add_argument("--password-stdin", action="store_true")
    modify.add_argument("--json", action="store_true")
    modify.set_defaults(handler=guard(users_modify))
    remove = with_config(users_sub.add_parser("remove", help="delete a user"))
    remove.add_argument("username")
    remove.add_argument("--json", action="store_true")
    remove.set_defaults(handler=guard(users_remove))
    tokens = users_sub.add_parser("tokens", help="API tokens")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    token_add = with_config(tokens_sub.add_parser("add", help="create a token (shown once)"))
    token_add.add_argument("username")
    token_add.add_argument("--name", default="api")
    expiry = token_add.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in-days", type=float)
    expiry.add_argument("--expires-at", help="ISO 8601 with a time zone")
    token_add.add_argument("--json", action="store_true")
    token_add.set_defaults(handler=guard(tokens_add))
    token_remove = with_config(tokens_sub.add_parser("remove", help="revoke a token by id"))
    token_remove.add_argument("token_id", type=int)
    token_remove.add_argument("--json", action="store_true")
    token_remove.set_defaults(handler=guard(tokens_remove))
